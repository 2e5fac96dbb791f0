"""Rank discovery: which launcher started this process, and the torch.distributed variables it implies.

torch.distributed's env:// initialisation reads RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (and LOCAL_RANK for
the device). Launchers differ in what they set:

- the ``deepspeed`` launcher (pdsh, local) and ``torchrun``: all of them; nothing to do;
- ``mpirun`` (recognised by OMPI_COMM_WORLD_SIZE, or PMI_SIZE for MPICH / Intel MPI), also under
  ``deepspeed --launcher openmpi``: DeepSpeed's MPI discovery asks mpi4py for the rank, the world size, the
  local rank (ranks with the same processor name) and rank 0's first address (``hostname -I`` on rank 0), and
  sets all five variables (MASTER_ADDR is always rank 0's first address; MASTER_PORT is kept if exported);
- SLURM's ``srun`` (recognised by SLURM_STEP_NUM_TASKS): RANK = SLURM_PROCID, WORLD_SIZE =
  SLURM_STEP_NUM_TASKS, LOCAL_RANK = SLURM_LOCALID, MASTER_ADDR = the step's first node (SLURM_STEP_NODELIST,
  else SLURM_JOB_NODELIST, compact form ``node[01-04]``) unless exported.

MASTER_PORT defaults to 29500 everywhere; export another one when jobs share a node.
"""

import re
from typing import Dict, Mapping

DEFAULT_MASTER_PORT = "29500"
_MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")  # Open MPI; MPICH / Intel MPI (hydra)


def detect_launcher(environ: Mapping[str, str]) -> str:
    """'torch' (RANK/WORLD_SIZE given: deepspeed launcher, torchrun), 'mpi', 'slurm' (an srun step) or 'none'.

    MPI before SLURM: ``mpirun`` inside a SLURM allocation inherits the batch step's SLURM_PROCID=0 in every
    process, while the MPI variables are per process. SLURM means an ``srun`` step (SLURM_STEP_NUM_TASKS): a
    batch script's own process also sees SLURM_PROCID/SLURM_NTASKS but is one process, not a world."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return "torch"
    if any(size in environ for size in _MPI_SIZE_VARIABLES):
        return "mpi"
    if "SLURM_PROCID" in environ and "SLURM_STEP_NUM_TASKS" in environ:
        return "slurm"
    return "none"


def world_size_variable(environ: Mapping[str, str]) -> str:
    """The variable holding the number of processes before the world is joined (the configuration is checked
    against it before any rank discovery runs): WORLD_SIZE, the MPI size, or srun's step size."""
    launcher = detect_launcher(environ)
    if launcher == "mpi":
        return next(size for size in _MPI_SIZE_VARIABLES if size in environ)
    if launcher == "slurm":
        return "SLURM_STEP_NUM_TASKS"
    return "WORLD_SIZE"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: 'gpu[003-005,9],cpu1' -> 'gpu003', 'a1,a2' -> 'a1'."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):  # the first entry ends at the first comma outside brackets
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            end = i
            break
    entry = nodelist[:end].strip()
    # every bracket group contributes its first value: 'rack[1-2]n[07-08]' -> 'rack1n07'
    host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], entry)
    if not host or "[" in host or "]" in host:
        raise ValueError(f"cannot read the first host of the SLURM node list {nodelist!r}; export MASTER_ADDR")
    return host


def launch_variables(environ: Mapping[str, str]) -> Dict[str, str]:
    """The torch.distributed variables to add to ``environ`` for an ``srun`` step (variables already set are
    kept). Other launchers need none: torch's set them all, and under MPI DeepSpeed's mpi4py discovery does
    (given ``distributed_port``, see :func:`master_port`)."""
    if detect_launcher(environ) != "slurm":
        return {}
    master = environ.get("MASTER_ADDR")
    if master is None:
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise ValueError("under srun without MASTER_ADDR the step's node list is needed "
                             "(SLURM_STEP_NODELIST / SLURM_JOB_NODELIST); export MASTER_ADDR")
        master = first_host(nodelist)
    found = {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": environ["SLURM_STEP_NUM_TASKS"],
             "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"), "MASTER_ADDR": master,
             "MASTER_PORT": master_port(environ)}
    return {key: value for key, value in found.items() if key not in environ}


def master_port(environ: Mapping[str, str]) -> str:
    port = environ.get("MASTER_PORT", DEFAULT_MASTER_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"MASTER_PORT={port!r} is not a TCP port; export a free port number (1-65535)")
    return port
