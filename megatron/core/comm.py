"""The one module through which megatron-ds talks to other ranks.

Everything goes through ``deepspeed.comm`` so DeepSpeed's communication logger (``comms_logger`` in the
DeepSpeed JSON) sees tensor- and pipeline-parallel traffic next to ZeRO's. ``deepspeed.comm`` wraps
``torch.distributed``; when a program set up ``torch.distributed`` itself (torchrun without
``deepspeed.init_distributed``), :func:`init_distributed` attaches DeepSpeed to that process group.
"""

import contextlib
import datetime
import os

import deepspeed
import deepspeed.comm as ds_comm
import torch
import torch.distributed

from megatron.core.launch_env import detect_launcher, launch_variables, master_port

ReduceOp = torch.distributed.ReduceOp
# deepspeed.comm's batch_isend_irecv accepts only its own P2POp (torch's is rejected); build them with
# send_op / recv_op.
P2POp = ds_comm.P2POp


def default_backend():
    """The accelerator's backend: ``nccl`` on CUDA GPUs, ``gloo`` on CPU (``ccl`` if oneCCL is installed)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().communication_backend_name()


def init_distributed(backend=None, timeout_minutes=10.0):
    """Join (or create) the default process group and hand it to ``deepspeed.comm``.

    Works under the ``deepspeed`` launcher, ``torchrun`` (env://), ``mpirun`` (DeepSpeed's MPI discovery
    fills RANK/WORLD_SIZE/MASTER_ADDR from mpi4py) and SLURM's ``srun`` (SLURM_PROCID etc., see
    :mod:`megatron.core.launch_env`). Single-process runs get a world of one.

    ``timeout_minutes`` (--distributed-timeout-minutes) bounds every collective of every group: torch gives
    groups made later by ``new_group`` (ours and DeepSpeed's) its module default, not the world's timeout, so
    that default is set too.
    """
    timeout = datetime.timedelta(minutes=timeout_minutes)
    _set_default_group_timeout(timeout)
    launcher = detect_launcher(os.environ)
    if not torch.distributed.is_initialized():
        if launcher == "none" and "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
            for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                               ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
                os.environ.setdefault(key, value)
        os.environ.update(launch_variables(os.environ))
    # distributed_port is what MPI discovery writes into MASTER_PORT: keep an exported one.
    deepspeed.init_distributed(dist_backend=backend or default_backend(), timeout=timeout,
                               distributed_port=int(master_port(os.environ)))
    _unlink_shm_allreduce_buffer()


def _set_default_group_timeout(timeout: datetime.timedelta):
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = timeout
    if hasattr(distributed_c10d, "default_pg_nccl_timeout"):
        distributed_c10d.default_pg_nccl_timeout = timeout


def group_timeout() -> datetime.timedelta:
    """The timeout new groups get (--distributed-timeout-minutes once :func:`init_distributed` ran)."""
    from torch.distributed import distributed_c10d

    return distributed_c10d.default_pg_timeout


def shm_allreduce_buffer_name(rank: int) -> str:
    """The POSIX shared-memory name DeepSpeed's CPU backend creates for ``rank`` when all ranks share a node
    (deepspeed/ops/csrc/cpu/comm/shm.cpp: deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>);
    its file is /dev/shm/<name>."""
    return (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")


def _unlink_shm_allreduce_buffer():
    """DeepSpeed's CPU backend maps one shared-memory buffer per rank (tens of MB, RAM-backed) and never
    unlinks it, so every run, and every killed run, left them in /dev/shm. Each rank maps every peer's buffer
    inside ``init_distributed``; after a barrier all mappings exist, the names are no longer needed, and each
    rank removes its own. The memory lives on until the last rank unmaps it (exits), whatever way it exits."""
    path = os.path.join("/dev/shm", shm_allreduce_buffer_name(torch.distributed.get_rank()))
    if torch.distributed.get_world_size() == 1 and not os.path.exists(path):
        return
    torch.distributed.barrier()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # the backend was not used (ranks on several nodes, or no shm op built)


def is_initialized():
    return torch.distributed.is_initialized()


def get_rank(group=None):
    return ds_comm.get_rank(group=group)


def get_world_size(group=None):
    return ds_comm.get_world_size(group=group)


def get_global_rank(group, group_rank):
    return torch.distributed.get_global_rank(group, group_rank)


def new_group(ranks):
    return ds_comm.new_group(list(ranks))  # timeout: the default set by init_distributed


def destroy_group(group):
    torch.distributed.destroy_process_group(group)


def barrier(group=None):
    ds_comm.barrier(group=group)


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False):
    return ds_comm.all_reduce(tensor, op=op, group=group, async_op=async_op)


def all_gather_into_tensor(output, input_, group=None, async_op=False):
    """Gathers ``input_`` from every rank of ``group`` into ``output`` stacked along dim 0."""
    return ds_comm.all_gather_into_tensor(output, input_, group=group, async_op=async_op)


def reduce_scatter_tensor(output, input_, group=None, op=ReduceOp.SUM, async_op=False):
    """Sums ``input_`` over ``group`` and leaves this rank's dim-0 chunk in ``output``."""
    return ds_comm.reduce_scatter_tensor(output, input_, op=op, group=group, async_op=async_op)


def all_to_all_single(output, input_, output_split_sizes=None, input_split_sizes=None, group=None,
                      async_op=False):
    """Scatters dim-0 chunks of ``input_`` to the ranks of ``group`` and gathers theirs into ``output``.

    With split sizes (lists, one entry per rank) the chunks may differ in length, as expert dispatch needs;
    without them every chunk is ``len(input_) / world``. gloo implements it on CPU, NCCL on GPUs.
    """
    return ds_comm.all_to_all_single(output, input_, output_split_sizes=output_split_sizes,
                                     input_split_sizes=input_split_sizes, group=group, async_op=async_op)


def broadcast(tensor, src, group=None):
    """``src`` is a global rank, as in torch.distributed."""
    return ds_comm.broadcast(tensor, src, group=group)


def broadcast_object(obj, src, group=None):
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=src, group=group)
    return holder[0]


def all_gather_object(obj, group=None):
    gathered = [None] * get_world_size(group)
    torch.distributed.all_gather_object(gathered, obj, group=group)
    return gathered


def send_op(tensor, peer, group=None, tag=0) -> P2POp:
    """An asynchronous send of ``tensor`` to global rank ``peer``, for :func:`batch_isend_irecv`."""
    return P2POp(ds_comm.isend, tensor, peer, group=group, tag=tag)


def recv_op(tensor, peer, group=None, tag=0) -> P2POp:
    """An asynchronous receive into ``tensor`` from global rank ``peer``, for :func:`batch_isend_irecv`."""
    return P2POp(ds_comm.irecv, tensor, peer, group=group, tag=tag)


def batch_isend_irecv(p2p_ops):
    """Starts a batch of sends/receives (:func:`send_op` / :func:`recv_op`) and returns their requests."""
    if not p2p_ops:
        return []
    return ds_comm.batch_isend_irecv(p2p_ops)


def destroy_world():
    """Leave the default process group; without it a rank can abort at interpreter exit."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def world_of_one(tool: str):
    """For single-process tools (checkpoint conversion): join a gloo world of one unless a world exists, refuse
    a larger world (the tool would run on every rank at once), and leave the world it joined on exit."""
    started_here = not is_initialized()
    if started_here:
        init_distributed("gloo")
    try:
        if get_world_size() != 1:
            raise ValueError(f"{tool} runs on one process, not {get_world_size()}; launch it with python")
        yield
    finally:
        if started_here:
            destroy_world()
