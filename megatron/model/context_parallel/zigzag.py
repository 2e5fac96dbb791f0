"""Zig-zag split of a sequence over CP ranks, for load-balanced causal attention.

The sequence is cut into 2 CP equal chunks; rank r holds chunks r and 2 CP - 1 - r. Under a causal mask the
work of a query chunk grows with its index, so pairing an early chunk with a late one gives every rank the
same number of unmasked (query, key) pairs. This is the split Megatron-LM uses for its ring attention.
"""

import torch


def zigzag_indices(seq_length: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Global token positions held by ``cp_rank``, in the order that rank stores them."""
    if seq_length % (2 * cp_size) != 0:
        raise ValueError(f"sequence length {seq_length} is not divisible by 2 x context-parallel size "
                         f"{cp_size} = {2 * cp_size}; zig-zag context parallelism cuts each sequence into "
                         f"2 CP equal chunks: choose --seq-length a multiple of {2 * cp_size}")
    chunk = seq_length // (2 * cp_size)
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk)
    last_index = 2 * cp_size - 1 - cp_rank
    second = torch.arange(last_index * chunk, (last_index + 1) * chunk)
    return torch.cat([first, second])


def zigzag_shard(tensor: torch.Tensor, cp_size: int, cp_rank: int, dim: int) -> torch.Tensor:
    """This rank's tokens of a full-sequence tensor (tokens, labels, loss mask, position ids, ...)."""
    index = zigzag_indices(tensor.size(dim), cp_size, cp_rank).to(tensor.device)
    return tensor.index_select(dim, index)


def zigzag_gather(shards, dim: int) -> torch.Tensor:
    """Inverse of :func:`zigzag_shard` given every rank's shard in CP-rank order (tests, checkpoints)."""
    cp_size = len(shards)
    seq_length = sum(shard.size(dim) for shard in shards)
    order = torch.cat([zigzag_indices(seq_length, cp_size, rank) for rank in range(cp_size)])
    stacked = torch.cat(list(shards), dim=dim)
    return stacked.index_select(dim, torch.argsort(order).to(stacked.device))
