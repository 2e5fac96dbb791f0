"""LayerNorm and RMSNorm whose parameters are declared TP-replicated.

Every TP rank holds the full norm weight. Without sequence parallelism each rank normalises the whole
(replicated) sequence, so its gradient is already complete. With sequence parallelism each rank normalises
only its s/tp slice of the sequence and holds a partial gradient; ``mark_replicated(..., sequence_parallel)``
sums it over the TP group inside backward. Both norms compute in fp32 and cast back, so bf16/fp16 runs
normalise with full-precision statistics.
"""

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core.tensor_parallel import init_method_constant, mark_replicated, new_parameter
from megatron.model.config_checks import NORMALIZATIONS


class LayerNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5, *, sequence_parallel: bool = False,
                 params_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = new_parameter((hidden_size,), init_method_constant(1.0), params_dtype)
        self.bias = new_parameter((hidden_size,), init_method_constant(0.0), params_dtype)
        mark_replicated(self.weight, sequence_parallel)
        mark_replicated(self.bias, sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), x.shape[-1:], self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight (Llama; no mean subtraction, no bias)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, *, sequence_parallel: bool = False,
                 params_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = new_parameter((hidden_size,), init_method_constant(1.0), params_dtype)
        mark_replicated(self.weight, sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        # Hugging Face Llama casts back to the activation dtype before scaling by the weight; so do we, so
        # that converted checkpoints produce the same bf16 numbers.
        return normed.to(x.dtype) * self.weight


def build_norm(config, *, sequence_parallel: bool = False, params_dtype: torch.dtype = torch.float32) -> nn.Module:
    """The norm that ``config.normalization`` names, over ``config.hidden_size`` with ``config.norm_epsilon``."""
    if config.normalization == "LayerNorm":
        norm_class = LayerNorm
    elif config.normalization == "RMSNorm":
        norm_class = RMSNorm
    else:
        raise ValueError(f"normalization {config.normalization!r} is not one of {NORMALIZATIONS}; "
                         f"pass --normalization LayerNorm or RMSNorm")
    return norm_class(config.hidden_size, config.norm_epsilon, sequence_parallel=sequence_parallel,
                      params_dtype=params_dtype)
