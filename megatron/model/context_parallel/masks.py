"""The attention rule of context-parallel attention, from global positions and document ids.

A query may see a key when both belong to the same document and, for causal attention, the key's global
position is not after the query's. Positions are the tokens' places in the full sequence (not the
--reset-position-ids values, which restart per document), so the rule holds whatever order and whichever
rank the tokens come from.
"""

from dataclasses import dataclass
from typing import Optional

import torch


def allowed_pairs(query_positions, key_positions, query_documents, key_documents, causal: bool):
    """Bool [b, 1, sq, sk], True where the query may attend to the key. Inputs are int [b, s]."""
    allowed = query_documents[:, :, None] == key_documents[:, None, :]
    if causal:
        allowed = allowed & (key_positions[:, None, :] <= query_positions[:, :, None])
    return allowed[:, None]


@dataclass(frozen=True)
class ContextParallelMask:
    """What attention needs under context parallelism, passed where the [b, 1, s, s] mask would go.

    A rank holds s/CP tokens of each sequence (zig-zag), so neither SDPA's causal flag nor a local mask is
    right: attention must run over the whole CP group and mask by global positions. ``positions`` int [s/CP]
    are this rank's tokens' places in the full sequence, ``documents`` int [b, s/CP] (or None: one document
    per sequence) the start of each token's document (--reset-attention-mask), ``algorithm`` "ring"
    (--context-parallel-size) or "ulysses" (--ds-sequence-parallel-size).
    """
    positions: torch.Tensor
    documents: Optional[torch.Tensor]
    algorithm: str

    def attend(self, query, key, value):
        """[b, nq, s/CP, hn] queries and [b, nkv, s/CP, hn] keys/values of this rank -> its context."""
        from megatron.model.context_parallel.ring_attention import ring_attention
        from megatron.model.context_parallel.ulysses import ulysses_attention

        attention = ring_attention if self.algorithm == "ring" else ulysses_attention
        return attention(query, key, value, self.positions, self.documents, causal=True)
