"""Global gradient norm of a tensor/pipeline-parallel model, for logging and for our own clipping paths.

DeepSpeed reports the norm for ZeRO and mixed precision (``engine.get_global_grad_norm()``) but not for an
fp32 ZeRO-0 engine, and pipeline schedules that drive one engine per stage need the norm over all stages.
"""

import math
from typing import Iterable

import torch

from megatron.core import comm
from megatron.core import parallel_state as ps


def global_grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """L2 norm of ``.grad`` over every rank of the model replica (TP x PP).

    TP-sharded parameters contribute their shard on every TP rank; TP-replicated ones are counted on TP
    rank 0 only, so the sum over the model-parallel group counts each element exactly once.
    """
    count_replicated = ps.get_tensor_model_parallel_rank() == 0
    squares = torch.zeros(1, dtype=torch.float64)
    for param in parameters:
        if param.grad is None:
            continue
        if getattr(param, "tensor_model_parallel", False) or count_replicated:
            squares += param.grad.detach().double().pow(2).sum().cpu()
    comm.all_reduce(squares, group=ps.get_model_parallel_group())
    return math.sqrt(squares.item())
