"""Dropout that draws from the right random stream for where its input lives.

A tensor replicated across TP ranks (the residual stream without sequence parallelism) must get the same
mask on every rank, so it uses the default generator, which model_parallel_manual_seed makes identical on
every TP rank. A tensor whose TP ranks hold different data (this rank's heads, or this rank's slice of the
sequence under sequence parallelism) draws from the tracked per-TP-rank generator. DeepSpeed's activation
checkpointing saves and restores both generators, so recomputation replays the same masks.
"""

import torch
import torch.nn.functional as F

from megatron.core.tensor_parallel import get_rng_tracker


def tensor_parallel_dropout(x: torch.Tensor, p: float, training: bool, *, sharded_across_tp: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x  # no random draw at all, so an unseeded tracker is fine for dropout-free models
    if sharded_across_tp:
        with get_rng_tracker().fork():
            return F.dropout(x, p=p, training=True)
    return F.dropout(x, p=p, training=True)
