"""A context-parallel rank's share of a batch: its zig-zag tokens and what attention needs to mask them.

Tokens, labels, loss mask and position ids ([b, s]) are cut to this rank's 2 chunks (see
:mod:`megatron.model.context_parallel.zigzag`). The [b, 1, s, s] document mask of --reset-attention-mask is
not kept (a rank must not hold an s x s tensor); it becomes per-token document ids, ``cp_documents`` [b, s/CP]
(the position where the token's document starts), and ``cp_positions`` [s/CP] are the tokens' global
positions. From those two the context-parallel attention ops rebuild exactly the original mask.
"""

import torch

from megatron.model.context_parallel.masks import ContextParallelMask
from megatron.model.context_parallel.zigzag import zigzag_indices

SEQUENCE_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def document_starts(attention_mask: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool (True = masked, document-causal) -> [b, s]: first key each query may attend to."""
    allowed = ~attention_mask[:, 0]
    return allowed.to(torch.int8).argmax(dim=-1)


def shard_batch_for_context_parallel(batch: dict, cp_size: int, cp_rank: int) -> dict:
    seq_length = batch["tokens"].size(1)
    index = zigzag_indices(seq_length, cp_size, cp_rank).to(batch["tokens"].device)
    shard = {key: value.index_select(1, index) for key, value in batch.items() if key in SEQUENCE_KEYS}
    shard["cp_positions"] = index
    if "attention_mask" in batch:
        shard["cp_documents"] = document_starts(batch["attention_mask"]).index_select(1, index)
    return shard


def context_parallel_micro_batch(batch: dict, cp_size: int, cp_rank: int, algorithm: str) -> dict:
    """The micro-batch the model gets on a CP rank: its share, with the mask argument attention reads."""
    shard = shard_batch_for_context_parallel(batch, cp_size, cp_rank)
    shard["attention_mask"] = ContextParallelMask(shard.pop("cp_positions"), shard.pop("cp_documents", None),
                                                  algorithm)
    return shard
