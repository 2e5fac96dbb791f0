"""Every random stream of one rank, stored in its own file so that ranks whose streams differ keep them.

DeepSpeed writes client state only from data-parallel rank 0 of each model-parallel rank, but the tracked
tensor-parallel generator differs across TP ranks and the default streams across pipeline stages, so each
rank writes ``rng_state/rank_XXXXX.pt`` itself. The file holds only tensors, ints and floats (numpy's state
becomes a tensor) so it loads with ``weights_only=True``.
"""

import os

import numpy as np
import torch

from megatron.checkpointing.safe_load import CheckpointError, safe_torch_load
from megatron.core.tensor_parallel.random import get_rng_states, set_rng_states

RNG_DIR = "rng_state"


def rng_file(checkpoint_dir: str, global_rank: int) -> str:
    return os.path.join(checkpoint_dir, RNG_DIR, f"rank_{global_rank:05d}.pt")


def _storable(states: dict) -> dict:
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    version, internal, gauss_next = states["python"]
    return {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": states["torch"],
        "accelerator": states["accelerator"],
        "tracker": dict(states["tracker"]),
    }


def _restorable(stored: dict) -> dict:
    python, numpy_state = stored["python"], stored["numpy"]
    return {
        "python": (python["version"], tuple(python["internal"].tolist()), python["gauss_next"]),
        "numpy": (numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                  numpy_state["has_gauss"], numpy_state["cached_gaussian"]),
        "torch": stored["torch"],
        "accelerator": stored["accelerator"],
        "tracker": stored["tracker"],
    }


def save_rng_state(checkpoint_dir: str, global_rank: int):
    path = rng_file(checkpoint_dir, global_rank)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(_storable(get_rng_states()), path)


def load_rng_state(checkpoint_dir: str, global_rank: int):
    path = rng_file(checkpoint_dir, global_rank)
    stored = safe_torch_load(path)
    try:
        set_rng_states(_restorable(stored))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"RNG state file {path} is malformed ({error!r}); resume with --no-load-rng") \
            from error

