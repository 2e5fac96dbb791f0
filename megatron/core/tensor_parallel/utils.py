"""Small arithmetic helpers shared by the tensor-parallel layers."""

from typing import List, Tuple

import torch


def divide(numerator: int, denominator: int, what: str = "size") -> int:
    """Exact integer division; a ValueError naming both numbers when it is not exact."""
    if numerator % denominator != 0:
        raise ValueError(f"{what} {numerator} is not divisible by the tensor-model-parallel size {denominator}; "
                         f"choose a tensor-model-parallel size that divides {numerator}")
    return numerator // denominator


def pad_vocab_size(orig_vocab_size: int, make_vocab_size_divisible_by: int, tensor_model_parallel_size: int) -> int:
    """Round the vocabulary up so that each TP shard is a multiple of ``make_vocab_size_divisible_by``.

    Padding keeps every vocab shard the same (GEMM-friendly) size; the padded rows are never a target.
    """
    if make_vocab_size_divisible_by < 1 or tensor_model_parallel_size < 1:
        raise ValueError(f"make_vocab_size_divisible_by ({make_vocab_size_divisible_by}) and the "
                         f"tensor-model-parallel size ({tensor_model_parallel_size}) must be positive")
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return ((orig_vocab_size + multiple - 1) // multiple) * multiple


def vocab_range(global_vocab_size: int, rank: int, world_size: int) -> Tuple[int, int]:
    """[first, last) vocabulary ids owned by TP ``rank``."""
    per_partition = divide(global_vocab_size, world_size, "vocabulary size")
    first = rank * per_partition
    return first, first + per_partition


def split_along_dim(tensor: torch.Tensor, num_partitions: int, dim: int) -> List[torch.Tensor]:
    size = divide(tensor.size(dim), num_partitions, f"tensor dimension {dim} of shape {tuple(tensor.shape)}")
    return list(torch.split(tensor, size, dim=dim))
