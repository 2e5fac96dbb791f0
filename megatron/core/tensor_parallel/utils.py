"""Small arithmetic helpers shared by the tensor-parallel layers."""

from typing import List, Tuple

import torch

from megatron.core.vocab_padding import pad_vocab_size  # noqa: F401  (re-exported)


def divide(numerator: int, denominator: int, what: str = "size") -> int:
    """Exact integer division; a ValueError naming both numbers when it is not exact."""
    if numerator % denominator != 0:
        raise ValueError(f"{what} {numerator} is not divisible by the tensor-model-parallel size {denominator}; "
                         f"choose a tensor-model-parallel size that divides {numerator}")
    return numerator // denominator


def vocab_range(global_vocab_size: int, rank: int, world_size: int) -> Tuple[int, int]:
    """[first, last) vocabulary ids owned by TP ``rank``."""
    per_partition = divide(global_vocab_size, world_size, "vocabulary size")
    first = rank * per_partition
    return first, first + per_partition


def split_along_dim(tensor: torch.Tensor, num_partitions: int, dim: int) -> List[torch.Tensor]:
    size = divide(tensor.size(dim), num_partitions, f"tensor dimension {dim} of shape {tuple(tensor.shape)}")
    return list(torch.split(tensor, size, dim=dim))
