"""Input embedding: vocab-parallel word embeddings, optional learned absolute positions, dropout.

Turns token ids [b, s] into the transformer's sequence-first hidden states [s, b, h] (sequence-first so that
sequence parallelism can split dim 0). With sequence parallelism the output is this TP rank's slice
[s/tp, b, h]. The position table is TP-replicated; its gradient is complete on every rank even with sequence
parallelism, because the backward of the sequence scatter all-gathers the gradient before it reaches it.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core.tensor_parallel import (
    VocabParallelEmbedding,
    init_method_normal,
    mark_replicated,
    new_parameter,
    scatter_to_sequence_parallel_region,
)
from megatron.model.config_checks import effective_sequence_parallel, original_vocab_size, padded_vocab_size
from megatron.model.dropout import tensor_parallel_dropout


def default_position_ids(batch_size: int, seq_length: int, device) -> torch.Tensor:
    """[b, s] positions 0..s-1 for every sample (what the batch means when it carries no position ids)."""
    return torch.arange(seq_length, device=device).unsqueeze(0).expand(batch_size, -1)


class LearnedPositionEmbedding(nn.Module):
    """A [max_positions, h] table, TP-replicated."""

    def __init__(self, max_positions: int, hidden_size: int, *, init_method, params_dtype: torch.dtype):
        super().__init__()
        self.weight = new_parameter((max_positions, hidden_size), init_method, params_dtype)
        mark_replicated(self.weight, sequence_parallel=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(position_ids, self.weight)          # [b, s] -> [b, s, h]


class Embedding(nn.Module):
    """Word (+ learned position) embeddings for ``config``; ``forward(input_ids [b, s], position_ids [b, s])``."""

    def __init__(self, config, *, sequence_parallel: bool = False, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        init_method = init_method_normal(config.init_method_std)
        self.sequence_parallel = effective_sequence_parallel(sequence_parallel)
        self.word_embeddings = VocabParallelEmbedding(padded_vocab_size(config), config.hidden_size,
                                                      init_method=init_method, params_dtype=params_dtype,
                                                      vocab_size=original_vocab_size(config))
        if config.position_embedding_type == "learned_absolute":
            self.position_embeddings = LearnedPositionEmbedding(config.max_position_embeddings, config.hidden_size,
                                                                init_method=init_method, params_dtype=params_dtype)
        else:
            self.position_embeddings = None
        self.dropout_p = config.hidden_dropout

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids)                     # [b, s, h]
        if self.position_embeddings is not None:
            if position_ids is None:
                position_ids = default_position_ids(*input_ids.shape, device=input_ids.device)
            embeddings = embeddings + self.position_embeddings(position_ids)
        embeddings = embeddings.transpose(0, 1).contiguous()             # [b, s, h] -> [s, b, h]
        if self.sequence_parallel:
            embeddings = scatter_to_sequence_parallel_region(embeddings)  # [s, b, h] -> [s/tp, b, h]
        # Under sequence parallelism each TP rank holds different tokens: independent masks (as Megatron).
        return tensor_parallel_dropout(embeddings, self.dropout_p, self.training,
                                       sharded_across_tp=self.sequence_parallel)
