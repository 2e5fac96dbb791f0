"""The output projection onto the (padded, vocab-sharded) vocabulary, and the per-token loss from it.

Two forms: an untied ``OutputLayer`` owning its [V, h] weight (Llama), or the input embedding's weight reused
(GPT-2, tied) through :func:`tied_head_logits`. Either way the logits stay vocab-sharded [.., V/tp], the
logits of padding ids are -inf (they are not classes: the function is the same for every TP size's padding),
and the loss is computed without gathering the vocabulary.
"""

import dataclasses

import torch
from torch import nn

from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    init_method_normal,
    linear_with_sharded_weight,
    mask_vocab_padding_,
    set_tensor_model_parallel_attributes,
    vocab_parallel_cross_entropy,
)
from megatron.core.tensor_parallel.initialization import draws_at_construction, initial_shard
from megatron.model.config_checks import original_vocab_size, padded_vocab_size


class OutputLayer(nn.Module):
    """Untied LM head: hidden [s, b, h] ([s/tp, b, h] under sequence parallelism) -> logits [s, b, V/tp]."""

    def __init__(self, config, *, sequence_parallel: bool = False, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.linear = ColumnParallelLinear(config.hidden_size, padded_vocab_size(config), bias=False,
                                           gather_output=False,
                                           init_method=init_method_normal(config.init_method_std),
                                           sequence_parallel=sequence_parallel, params_dtype=params_dtype)
        # Its rows are vocabulary entries, padding included: declare it so that checkpoint conversion strips
        # the padding rows exactly as for the embedding, and draw only the real rows (padding stays zero).
        self.vocab_size = original_vocab_size(config)
        weight = self.linear.weight
        set_tensor_model_parallel_attributes(weight, "vocab", 0)
        weight.init_spec = dataclasses.replace(weight.init_spec, drawn_rows=self.vocab_size)
        if draws_at_construction():
            with torch.no_grad():
                weight.copy_(initial_shard(weight.init_spec))

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return mask_vocab_padding_(self.linear(hidden_states), self.vocab_size)


def tied_head_logits(hidden_states: torch.Tensor, word_embeddings: torch.Tensor, sequence_parallel: bool,
                     vocab_size: int) -> torch.Tensor:
    """Tied LM head: hidden [s(/tp), b, h] @ the [V/tp, h] embedding table^T -> logits [s, b, V/tp]."""
    logits = linear_with_sharded_weight(hidden_states, word_embeddings, sequence_parallel)
    return mask_vocab_padding_(logits, vocab_size)


def per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Vocab-sharded logits [s, b, V/tp] (padding ids at -inf) and labels [b, s] -> cross entropy [b, s]."""
    loss = vocab_parallel_cross_entropy(logits, labels.transpose(0, 1))   # [s, b]
    return loss.transpose(0, 1).contiguous()                              # [s, b] -> [b, s]
