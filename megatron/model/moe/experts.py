"""This rank's experts: GELU or SwiGLU MLPs, each named by its GLOBAL expert id.

Module paths follow DeepSpeed's MoE checkpoint scheme (``deepspeed_experts.<local id>``, which DeepSpeed's
engine saves as one file per GLOBAL expert id and maps back on load, whatever the EP size), while every
parameter's ``init_name`` rewrites its name to the global id for the layout-independent initialisation
(megatron/core/tensor_parallel/initialization.py): expert 5 gets the same values whichever rank holds it.
SwiGLU's fc1 interleaves gate and up rows exactly as the dense MLP.

Expert parameters carry DeepSpeed's MoE marks (``allreduce=False``, ``group_name``): the engine reduces their
gradients over the expert-data-parallel group instead of the whole data-parallel group.
"""

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core.tensor_parallel import init_method_normal, scaled_init_method_normal
from megatron.core.tensor_parallel.initialization import init_method_constant
from megatron.core.tensor_parallel.layers import mark_replicated, new_parameter


def expert_group_name(expert_parallel_size: int) -> str:
    """DeepSpeed's name for the expert groups of one EP size (deepspeed.utils.groups)."""
    return f"ep_size_{expert_parallel_size}"


class _Linear(nn.Module):
    def __init__(self, in_size, out_size, init_method, bias, dtype):
        super().__init__()
        self.weight = new_parameter((out_size, in_size), init_method, dtype)
        self.bias = new_parameter((out_size,), init_method_constant(0.0), dtype) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class ExpertMLP(nn.Module):
    """h -> ffn -> h, GELU (tanh) or SwiGLU with row-interleaved [gate; up] fc1 (see megatron/model/mlp.py)."""

    def __init__(self, config, ffn_hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.swiglu, self.ffn = config.swiglu, ffn_hidden_size
        self.linear_fc1 = _Linear(config.hidden_size, ffn_hidden_size * (2 if self.swiglu else 1),
                                  init_method_normal(config.init_method_std), config.add_bias_linear, dtype)
        self.linear_fc2 = _Linear(ffn_hidden_size, config.hidden_size,
                                  scaled_init_method_normal(config.init_method_std, config.num_layers),
                                  config.add_bias_linear, dtype)

    def forward(self, x):
        hidden = self.linear_fc1(x)
        if self.swiglu:
            gate, up = hidden.view(-1, self.ffn, 2).unbind(-1)
            hidden = F.silu(gate) * up
        else:
            hidden = F.gelu(hidden, approximate="tanh")
        return self.linear_fc2(hidden)


def _to_global(local: int, global_id: int):
    def rename(name: str) -> str:
        return name.replace(f"deepspeed_experts.{local}.", f"deepspeed_experts.{global_id}.")
    return rename


class LocalExperts(nn.Module):
    """Experts [first, first + count) of ``num_experts``; forward runs each on its contiguous chunk of rows."""

    def __init__(self, config, ffn_hidden_size: int, first: int, count: int, *, expert_parallel_size: int,
                 sequence_parallel: bool, dtype: torch.dtype):
        super().__init__()
        self.first, self.count = first, count
        self.deepspeed_experts = nn.ModuleDict({str(i): ExpertMLP(config, ffn_hidden_size, dtype)
                                                for i in range(count)})
        for local, expert in self.deepspeed_experts.items():
            for param in expert.parameters():
                # Replicated over TP; under sequence parallelism each TP rank sees its own tokens: sum the grads.
                mark_replicated(param, sequence_parallel)
                param.allreduce = False
                param.group_name = expert_group_name(expert_parallel_size)
                param.init_name = _to_global(int(local), first + int(local))

    def forward(self, rows: torch.Tensor, counts: List[int], pad_to: Optional[int] = None) -> torch.Tensor:
        outputs = []
        for index, chunk in enumerate(torch.split(rows, counts)):
            expert = self.deepspeed_experts[str(index)]
            if pad_to is not None and chunk.shape[0] < pad_to:
                # Fixed-shape expert input (capacity padding); the padding rows' outputs are discarded.
                padded = torch.cat([chunk, chunk.new_zeros(pad_to - chunk.shape[0], chunk.shape[1])])
                outputs.append(expert(padded)[:chunk.shape[0]])
            else:
                outputs.append(expert(chunk))
        return torch.cat(outputs) if outputs else rows.new_zeros(0, rows.shape[-1])
