"""Saving through the DeepSpeed engine, atomically.

A checkpoint is written under a temporary tag (``global_stepN.incomplete``); only after every rank finished
writing (a barrier) does rank 0 write the manifest, fsync, rename the folder to ``global_stepN`` and replace
``latest`` with an atomic ``os.replace``. A save killed at any point therefore leaves the previous checkpoint
complete and ``latest`` naming it; the leftover ``.incomplete`` folder is removed by the next save.

Folder layout (DeepSpeed's files plus ours)::

    <save>/latest                                  tag of the newest complete checkpoint
    <save>/global_stepN/mp_rank_XX_model_states.pt DeepSpeed (client state inside, from DP rank 0)
    <save>/global_stepN/*optim_states.pt           DeepSpeed ZeRO shards
    <save>/global_stepN/rng_state/rank_XXXXX.pt    every rank's RNG streams
    <save>/global_stepN/checkpoint_manifest.json   written last: files, sizes, layout, parameters
"""

import errno
import os
import re
import shutil
from dataclasses import asdict
from typing import List, Optional

import deepspeed
import torch

import megatron
from megatron.checkpointing.manifest import Layout, write_manifest
from megatron.checkpointing.optimizer_state import ensure_adam_state
from megatron.checkpointing.parameters import (global_parameter_table, global_universal_checkpoint_info,
                                               pipeline_name_maps)
from megatron.checkpointing.recovery_script import replace_recovery_scripts
from megatron.checkpointing.rng_state import save_rng_state
from megatron.checkpointing.safe_load import CheckpointError
from megatron.core import comm
from megatron.core import parallel_state as ps

LATEST_FILE = "latest"
MEGATRON_TRACKER_FILE = "latest_checkpointed_iteration.txt"
INCOMPLETE_SUFFIX = ".incomplete"
UNIVERSAL_SUFFIX = ".universal"
CLIENT_STATE_KEY = "megatron_ds"
_TAG_PATTERN = re.compile(r"^global_step(\d+)$")


def print_rank0(message: str):
    if comm.get_rank() == 0:
        print(message, flush=True)


def tag_for(iteration: int) -> str:
    return f"global_step{iteration}"


def current_layout(engine) -> Layout:
    return Layout(tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
                  pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
                  data_parallel_size=ps.get_data_parallel_world_size(),
                  zero_stage=engine.zero_optimization_stage())


def versions() -> dict:
    # str(): torch.__version__ is a TorchVersion, which a weights-only load would refuse.
    return {"megatron_ds": str(megatron.__version__), "deepspeed": str(deepspeed.__version__),
            "torch": str(torch.__version__)}


def published_tags(save_dir: str) -> list:
    """Complete checkpoints in ``save_dir``, oldest first."""
    if not os.path.isdir(save_dir):
        return []
    found = [(int(match.group(1)), name) for name in os.listdir(save_dir)
             if (match := _TAG_PATTERN.match(name)) and os.path.isdir(os.path.join(save_dir, name))]
    return [name for _, name in sorted(found)]


def read_latest(save_dir: str) -> Optional[str]:
    path = os.path.join(save_dir, LATEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return handle.read().strip() or None


def _fsync_path(path: str):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(folder: str):
    for root, _, names in os.walk(folder):
        for name in names:
            _fsync_path(os.path.join(root, name))
        _fsync_path(root)


def write_latest(save_dir: str, tag: str):
    """Replace ``latest`` atomically: a reader sees the old tag or the new one, never a partial file."""
    temporary = os.path.join(save_dir, f".{LATEST_FILE}.tmp")
    with open(temporary, "w") as handle:
        handle.write(tag)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, os.path.join(save_dir, LATEST_FILE))
    _write_megatron_tracker(save_dir, tag)
    _fsync_path(save_dir)


def _write_megatron_tracker(save_dir: str, tag: str):
    """Megatron's tracker file next to DeepSpeed's `latest`: the iteration as text. Megatron-DeepSpeed's job
    scripts read it to find where a run stands; the loader here reads only `latest`."""
    match = re.fullmatch(r"global_step(\d+)", tag)
    if match is None:
        return
    temporary = os.path.join(save_dir, f".{MEGATRON_TRACKER_FILE}.tmp")
    with open(temporary, "w") as handle:
        handle.write(match.group(1))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, os.path.join(save_dir, MEGATRON_TRACKER_FILE))


def _publish(save_dir: str, temporary_tag: str, tag: str):
    final, temporary = os.path.join(save_dir, tag), os.path.join(save_dir, temporary_tag)
    _fsync_tree(temporary)
    if os.path.exists(final):  # re-saving an iteration: move the old copy aside, then drop it
        replaced = final + ".replaced"
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
        os.rename(temporary, final)
        shutil.rmtree(replaced)
    else:
        os.rename(temporary, final)
    shutil.rmtree(final + UNIVERSAL_SUFFIX, ignore_errors=True)  # a cached conversion of the old copy
    _fsync_path(save_dir)
    write_latest(save_dir, tag)


def prune_checkpoints(save_dir: str, keep_last: int):
    """Delete all but the newest ``keep_last`` complete checkpoints (and their universal conversions)."""
    latest = read_latest(save_dir)
    tags = published_tags(save_dir)
    for tag in tags[:max(len(tags) - keep_last, 0)]:
        if tag == latest:
            continue
        shutil.rmtree(os.path.join(save_dir, tag + UNIVERSAL_SUFFIX), ignore_errors=True)
        shutil.rmtree(os.path.join(save_dir, tag))


def _remove_leftovers(save_dir: str):
    """Folders of saves that were killed midway; never loadable, so safe to delete."""
    for name in os.listdir(save_dir):
        # global_stepN.incomplete, a killed conversion's global_stepN.universal.incomplete(.stageK), .replaced
        if INCOMPLETE_SUFFIX in name or name.endswith(".replaced"):
            shutil.rmtree(os.path.join(save_dir, name), ignore_errors=True)


def deepspeed_engine(engine):
    """The DeepSpeed engine itself, also when wrapped by a Megatron-schedule pipeline (``.engine``)."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    return engine if isinstance(engine, DeepSpeedEngine) else engine.engine


def _optimizer_parameter_names(engine) -> Optional[List[List[str]]]:
    """Names of a plain torch optimizer's parameters, group by group: its state_dict keys them by position
    only, and the ZeRO-0 universal conversion needs to know which state belongs to which parameter."""
    optimizer = engine.optimizer
    if engine.zero_optimization_stage() != 0 or not isinstance(optimizer, torch.optim.Optimizer):
        return None
    names = {id(param): name for name, param in engine.module.named_parameters()}
    return [[names.get(id(param)) for param in group["params"]] for group in optimizer.param_groups]


def _free_bytes(path: str) -> tuple:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize


def _raise_write_failure(save_dir: str, temporary_tag: str, iteration: int, error: Exception):
    """A failed write: say "disk full" when it is (torch reports ENOSPC as "basic_ios::clear: iostream error"
    or "file write failed", without the errno), drop the partial folder, and point at the intact checkpoint."""
    free, total = _free_bytes(save_dir)
    chain, cause = [], error
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    no_space = any(getattr(item, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for item in chain) or \
        free < max(1 << 20, total // 1000)
    shutil.rmtree(os.path.join(save_dir, temporary_tag), ignore_errors=True)
    previous = read_latest(save_dir)
    kept = (f"the previous checkpoint {os.path.join(save_dir, previous)} (`latest`) is intact" if previous else
            "no earlier checkpoint exists in this folder")
    if no_space:
        raise CheckpointError(f"disk full: saving iteration {iteration} to {save_dir} failed with {free} bytes free "
                              f"of {total} ({type(error).__name__}: {error}); the partial save was removed and "
                              f"{kept}. Free space (or --keep-last N, or another --save) and resume with --load") \
            from error
    raise CheckpointError(f"saving iteration {iteration} to {save_dir} failed ({type(error).__name__}: {error}); "
                          f"the partial save was removed and {kept}") from error


def save_checkpoint(engine, save_dir: str, *, iteration: int, consumed_train_samples: int,
                    consumed_train_tokens: Optional[int] = None, config=None,
                    keep_last: Optional[int] = None, tokenizer: Optional[dict] = None) -> str:
    """Save the engine's full training state as ``<save_dir>/global_step<iteration>``; returns that folder.

    A collective: every rank calls it with the same arguments. ``config`` is the RunConfig (stored in the
    checkpoint so a resume can check and reuse it); ``tokenizer`` its fingerprint (tokenizer_check.py).
    """
    if not save_dir:
        raise ValueError("save_checkpoint needs a folder: pass --save DIR")
    engine = deepspeed_engine(engine)
    tag, temporary_tag = tag_for(iteration), tag_for(iteration) + INCOMPLETE_SUFFIX
    rank = comm.get_rank()
    if rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        _remove_leftovers(save_dir)
    comm.barrier()

    layout = current_layout(engine)
    training = {"iteration": iteration, "consumed_train_samples": consumed_train_samples,
                "consumed_train_tokens": consumed_train_tokens}
    client_state = {
        CLIENT_STATE_KEY: {**training, "layout": asdict(layout), "versions": versions(),
                           "config": config.to_dict() if config is not None else None,
                           "optimizer_parameter_names": _optimizer_parameter_names(engine)},
        # Read by DeepSpeed's ds_to_universal; our dict overrides the bound method DeepSpeed would store.
        "universal_checkpoint_info": global_universal_checkpoint_info(engine.module),
        "iteration": iteration,
    }
    if getattr(engine, "has_moe_layers", False):
        # DeepSpeed's MoE save path writes the module's own universal_checkpoint_info (the whole model's: MoE
        # runs have no pipeline) and refuses the key in client_state.
        client_state.pop("universal_checkpoint_info")
    if engine.zero_optimization_stage() == 3:
        ensure_adam_state(engine)  # a ZeRO-3 save before the first step would have empty optimizer shards
    try:
        engine.save_checkpoint(save_dir, tag=temporary_tag, client_state=client_state, save_latest=False)
        save_rng_state(os.path.join(save_dir, temporary_tag), rank)
    except Exception as error:  # noqa: BLE001 - classified, then re-raised
        _raise_write_failure(save_dir, temporary_tag, iteration, error)
    parameters = global_parameter_table(engine.module)  # a collective, so also a barrier after the writes
    names = pipeline_name_maps(engine.module)
    comm.barrier()

    if rank == 0:
        replace_recovery_scripts(save_dir)  # DeepSpeed copies its scripts into the save folder itself
        write_manifest(os.path.join(save_dir, temporary_tag), iteration=iteration, layout=layout,
                       parameters=parameters, pipeline_names=names, training=training, versions=versions(),
                       config=client_state[CLIENT_STATE_KEY]["config"], tokenizer=tokenizer)
        _publish(save_dir, temporary_tag, tag)
        if keep_last:
            prune_checkpoints(save_dir, keep_last)
    comm.barrier()
    return os.path.join(save_dir, tag)
