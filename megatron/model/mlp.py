"""The transformer MLP: h -> ffn -> h with GELU, or SwiGLU.

GELU: ``linear_fc1`` [ffn, h] column-parallel, GELU (tanh approximation, as GPT-2 and Megatron's fused
bias-GELU), ``linear_fc2`` [h, ffn] row-parallel.

SwiGLU: out = fc2(silu(x W_gate^T) * (x W_up^T)). ``linear_fc1`` fuses W_gate and W_up row-interleaved:

    linear_fc1.weight[2 j]     = W_gate[j]     (row j of HF gate_proj)
    linear_fc1.weight[2 j + 1] = W_up[j]       (row j of HF up_proj),        j = 0 .. ffn - 1

(bias likewise). A contiguous row shard of TP rank r is then exactly the gate rows and the matching up rows
of its ffn/tp slice, for every TP size. One GEMM (one sequence-parallel all-gather of the input, not two)
serves both halves, and the full tensor does not depend on TP, so a universal checkpoint concatenates the
shards along dim 0 like any column-parallel weight (no ``parameter_with_2_sub_params_cat_dim_0``, whose
per-rank [gate_r; up_r] layout would change with TP).
"""

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    divide,
    init_method_normal,
    scaled_init_method_normal,
)
from megatron.model.config_checks import tensor_parallel_size


class MLP(nn.Module):
    """Input [s, b, h] ([s/tp, b, h] with sequence parallelism) -> output of the same shape."""

    def __init__(self, config, *, sequence_parallel: bool = False, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.swiglu = config.swiglu
        self.ffn_per_rank = divide(config.ffn_hidden_size, tensor_parallel_size(), "MLP hidden size (ffn_hidden_size)")
        fc1_size = 2 * config.ffn_hidden_size if self.swiglu else config.ffn_hidden_size
        self.linear_fc1 = ColumnParallelLinear(
            config.hidden_size, fc1_size, bias=config.add_bias_linear, gather_output=False,
            init_method=init_method_normal(config.init_method_std), sequence_parallel=sequence_parallel,
            params_dtype=params_dtype)
        self.linear_fc2 = RowParallelLinear(
            config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear, input_is_parallel=True,
            init_method=scaled_init_method_normal(config.init_method_std, config.num_layers),
            sequence_parallel=sequence_parallel, params_dtype=params_dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        intermediate = self.linear_fc1(hidden_states)            # [s, b, ffn/tp] or [s, b, 2 ffn/tp]
        if self.swiglu:
            # [s, b, 2 ffn/tp] -> [s, b, ffn/tp, 2] -> [s, b, 2, ffn/tp]: one de-interleaving copy makes the
            # gate and up halves contiguous, which costs less than SiLU and its backward on stride-2 views.
            pairs = intermediate.unflatten(-1, (self.ffn_per_rank, 2)).transpose(-1, -2).contiguous()
            gate, up = pairs.unbind(-2)                                  # [s, b, ffn/tp] each
            intermediate = F.silu(gate) * up
        else:
            intermediate = F.gelu(intermediate, approximate="tanh")
        return self.linear_fc2(intermediate)
