"""Model-parallel RNG: identical random streams across TP ranks outside the TP region, distinct inside.

Dropout on TP-replicated activations (after the row-parallel reduction) must draw the same mask on every TP
rank, while dropout on TP-sharded activations (attention probabilities of this rank's heads) must draw
independent masks. The default generator carries the first stream; a tracked generator state, seeded with
``seed + 2718 + tp_rank`` (Megatron's offset), carries the second and is entered with
``get_rng_tracker().fork()``.

The tracker is DeepSpeed's own (``deepspeed.checkpointing.get_cuda_rng_tracker``), which despite its name
drives the current accelerator's generator, the CPU one included. Sharing it matters: DeepSpeed's activation
checkpointing saves and restores exactly this tracker's states around recomputation, so dropout masks replay
bit-identically in the backward pass.
"""

import random

import numpy as np
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.runtime.activation_checkpointing import checkpointing as ds_checkpointing

from megatron.core import parallel_state as ps

MODEL_PARALLEL_RNG_TRACKER_NAME = ds_checkpointing._MODEL_PARALLEL_RNG_TRACKER_NAME
_TENSOR_PARALLEL_SEED_OFFSET = 2718


def get_rng_tracker():
    return ds_checkpointing.get_cuda_rng_tracker()


# Megatron-LM's name for the same thing.
get_cuda_rng_tracker = get_rng_tracker


def model_parallel_manual_seed(seed: int):
    """Seed the default generator with ``seed`` and the tracked TP generator with a per-TP-rank seed.

    Call after initialize_model_parallel; every TP rank of a group passes the same ``seed``.
    """
    tensor_parallel_seed = seed + _TENSOR_PARALLEL_SEED_OFFSET + ps.get_tensor_model_parallel_rank()
    torch.manual_seed(seed)
    get_accelerator().manual_seed_all(seed)
    tracker = get_rng_tracker()
    tracker.reset()
    tracker.add(MODEL_PARALLEL_RNG_TRACKER_NAME, tensor_parallel_seed)


# Megatron-LM's name; works on every accelerator including the CPU.
model_parallel_cuda_manual_seed = model_parallel_manual_seed


def set_random_seed(seed: int):
    """Seed python, numpy and torch for this rank's place in the grid.

    These streams drive dropout and data order only: initial weights come from (seed, parameter name) whatever
    the layout (initialization.py). Pipeline stages hold different layers, so each stage gets its own dropout
    stream (seed + 100 * pp_rank, as in Megatron).
    """
    stage_seed = seed + 100 * ps.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    model_parallel_manual_seed(stage_seed)


def get_rng_states() -> dict:
    """Every RNG state of this rank, for checkpoints (restored with :func:`set_rng_states`)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "accelerator": get_accelerator().get_rng_state(),
        "tracker": get_rng_tracker().get_states(),
    }


def set_rng_states(states: dict):
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    get_accelerator().set_rng_state(states["accelerator"])
    get_rng_tracker().set_states(dict(states["tracker"]))
