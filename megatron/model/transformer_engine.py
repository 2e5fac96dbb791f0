"""The guard for NVIDIA transformer-engine (``use_transformer_engine``): a GPU-only option.

transformer-engine is imported lazily, only when asked for, so the CPU build never needs it. This build
checks availability and refuses clearly; the TE-backed layers themselves are not implemented yet (they
cannot be tested on the CPU machines this project is developed on), so asking for them on a GPU with TE
installed is refused too rather than silently ignored.
"""

import importlib

from deepspeed.accelerator import get_accelerator


def require_transformer_engine():
    """Return ``transformer_engine.pytorch`` or raise ValueError saying why it cannot be used here."""
    device = get_accelerator().device_name()
    if device != "cuda":
        raise ValueError(f"use_transformer_engine needs an NVIDIA GPU, but the accelerator is {device!r}; "
                         f"drop --use-transformer-engine, or run on an NVIDIA GPU "
                         f"with `pip install transformer-engine[pytorch]`")
    try:
        return importlib.import_module("transformer_engine.pytorch")
    except ImportError as error:
        raise ValueError(f"use_transformer_engine is set but transformer-engine is not installed ({error}); "
                         f"`pip install transformer-engine[pytorch]` on the NVIDIA GPU machine, or drop the "
                         f"flag") from error


def check_transformer_engine_request(config) -> None:
    if not getattr(config, "use_transformer_engine", False):
        return
    require_transformer_engine()
    raise ValueError("use_transformer_engine: transformer-engine is available, but this build has no "
                     "TE-backed layers yet; drop the flag to use the native tensor-parallel layers (they run "
                     "on the GPU too)")
