"""--distributed-backend: Megatron's flag mapped onto what this machine's accelerator can run.

Megatron-DeepSpeed's scripts say `--distributed-backend nccl`; on a machine without CUDA that backend
cannot start, and the same script should still run, so it becomes the accelerator's own backend (gloo on
CPU) with a log line. A backend the machine can run (gloo anywhere, nccl with CUDA) is used as asked.
"""

from typing import Optional, Tuple

import torch

from megatron.core import comm


def choose_backend(requested: Optional[str]) -> Tuple[str, Optional[str]]:
    """(backend to initialise, note to log or None)."""
    default = comm.default_backend()
    if requested is None or requested == default:
        return default, None
    unavailable = {
        "nccl": not (torch.cuda.is_available() and torch.distributed.is_nccl_available()),
        "mpi": not torch.distributed.is_mpi_available(),
        "gloo": not torch.distributed.is_gloo_available(),
    }
    if requested == "ccl":
        try:
            import oneccl_bindings_for_pytorch  # noqa: F401  (registers the ccl backend)
            unavailable["ccl"] = False
        except ImportError:
            unavailable["ccl"] = True
    if unavailable.get(requested, True):
        return default, (f"--distributed-backend {requested} cannot run on this machine (accelerator backend: "
                         f"{default}); using {default}")
    return requested, None
