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
    rank 0 only, so the sum over the model-parallel group counts each element exactly once. MoE experts
    (``allreduce=False``) differ between the ranks of an expert-parallel group: their squares are summed over
    that group first, so every expert counts once.
    """
    count_replicated = ps.get_tensor_model_parallel_rank() == 0
    squares = torch.zeros(1, dtype=torch.float64)
    expert_squares = torch.zeros(1, dtype=torch.float64)
    for param in parameters:
        if param.grad is None:
            continue
        if getattr(param, "tensor_model_parallel", False) or count_replicated:
            target = expert_squares if getattr(param, "allreduce", True) is False else squares
            target += param.grad.detach().double().pow(2).sum().cpu()
    if ps.get_expert_model_parallel_world_size() > 1:
        comm.all_reduce(expert_squares, group=ps.get_expert_model_parallel_group())
    squares += expert_squares
    comm.all_reduce(squares, group=ps.get_model_parallel_group())
    return math.sqrt(squares.item())
