"""Vocabulary padding: the embedding table is split across tensor-parallel ranks in equal slices.

Pure Python on purpose: the tokenizer tools and the configuration import it without paying for torch.
"""

from __future__ import annotations


def pad_vocab_size(orig_vocab_size: int, make_vocab_size_divisible_by: int, tensor_model_parallel_size: int) -> int:
    """Smallest size >= `orig_vocab_size` that is a multiple of divisible_by * tp.

    Every TP rank then holds the same number of embedding rows, and each slice keeps the alignment
    `make_vocab_size_divisible_by` asks for (128 in Megatron, for fast GEMMs).
    """
    for name, value in (
        ("orig_vocab_size", orig_vocab_size),
        ("make_vocab_size_divisible_by", make_vocab_size_divisible_by),
        ("tensor_model_parallel_size", tensor_model_parallel_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"pad_vocab_size: {name} must be a positive integer, got {value!r}")
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return -(-orig_vocab_size // multiple) * multiple
