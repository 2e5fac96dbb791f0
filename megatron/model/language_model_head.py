"""The output projection onto the (padded, vocab-sharded) vocabulary, and the per-token loss from it.

Two forms: an untied ``OutputLayer`` owning its [V, h] weight (Llama), or the input embedding's weight reused
(GPT-2, tied) through ``linear_with_sharded_weight``. Either way the logits stay vocab-sharded
[.., V/tp] and the loss is computed without gathering the vocabulary.
"""

import torch
from torch import nn

from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    init_method_normal,
    set_tensor_model_parallel_attributes,
    vocab_parallel_cross_entropy,
)
from megatron.model.config_checks import padded_vocab_size


class OutputLayer(nn.Module):
    """Untied LM head: hidden [s, b, h] ([s/tp, b, h] under sequence parallelism) -> logits [s, b, V/tp]."""

    def __init__(self, config, *, sequence_parallel: bool = False, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.linear = ColumnParallelLinear(config.hidden_size, padded_vocab_size(config), bias=False,
                                           gather_output=False,
                                           init_method=init_method_normal(config.init_method_std),
                                           sequence_parallel=sequence_parallel, params_dtype=params_dtype)
        # Its rows are vocabulary entries, padding included: declare it so that checkpoint conversion strips
        # the padding rows exactly as for the embedding.
        set_tensor_model_parallel_attributes(self.linear.weight, "vocab", 0)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden_states)


def per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Vocab-sharded logits [s, b, V/tp] and labels [b, s] -> cross-entropy per token [b, s]."""
    loss = vocab_parallel_cross_entropy(logits, labels.transpose(0, 1))   # [s, b]
    return loss.transpose(0, 1).contiguous()                              # [s, b] -> [b, s]
