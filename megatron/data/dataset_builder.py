"""build_train_valid_test_datasets: data prefixes + split + sample counts -> train/valid/test datasets."""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Sequence, Union

import numpy as np

from megatron.data.blended_dataset import BlendedDataset, load_or_build_blending_indices, parse_data_path
from megatron.data.gpt_dataset import GPTDataset, GPTDatasetConfig, default_cache_dir
from megatron.data.indexed_dataset import IndexedDataset
from megatron.data.tokenizers.base import MegatronTokenizer

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")


def parse_split(split: str) -> list[float]:
    """'969,30,1' (or '969/30/1', or fewer parts, padded with 0) -> three fractions summing to 1."""
    parts = [p for p in split.replace("/", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"split {split!r} must be up to three comma-separated numbers, like '969,30,1'") from None
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(
            f"split {split!r} must be up to three non-negative numbers with a positive sum, like '969,30,1'"
        )
    values += [0.0] * (3 - len(values))
    total = sum(values)
    return [v / total for v in values]


def split_document_ranges(split: str, num_documents: int) -> list[tuple[int, int]]:
    """Contiguous [first, last) document ranges for train, valid and test (Megatron's rounding)."""
    bounds = [0]
    for fraction in parse_split(split):
        bounds.append(bounds[-1] + int(round(fraction * num_documents)))
    # Rounding may overshoot or undershoot the total; shift every boundary after the first to absorb it.
    excess = bounds[-1] - num_documents
    bounds = [bounds[0]] + [max(0, b - excess) for b in bounds[1:]]
    return [(bounds[i], bounds[i + 1]) for i in range(3)]


def build_train_valid_test_datasets(
    data_path: Union[str, Sequence[str]],
    split: str,
    seq_length: int,
    seed: int,
    train_valid_test_num_samples: Sequence[Optional[int]],
    tokenizer: MegatronTokenizer,
    eod_mask_loss: bool = False,
    reset_position_ids: bool = False,
    reset_attention_mask: bool = False,
    cache_dir: Optional[str] = None,
    barrier: Optional[Callable[[], None]] = None,
    rank: int = 0,
) -> tuple:
    """(train, valid, test) datasets; an entry is None when it gets 0 samples or its split has no documents.

    data_path: a prefix, or weight/prefix pairs (`["0.7", "a", "0.3", "b"]`) blended with exact weights.
    split: document fractions for train/valid/test, '969,30,1'; each prefix is split on its own.
    train_valid_test_num_samples: samples wanted per split (None: one epoch; single prefix only).
    cache_dir: where index files go (default: `index-cache` next to the first prefix). With several ranks pass
    `barrier` (e.g. torch.distributed.barrier) and `rank`: rank 0 builds, the others wait and load.
    """
    if len(train_valid_test_num_samples) != 3:
        raise ValueError(f"train_valid_test_num_samples needs 3 entries, got {list(train_valid_test_num_samples)}")
    prefixes, weights = parse_data_path(data_path)
    config = GPTDatasetConfig(
        seq_length=seq_length, seed=seed, eod=tokenizer.eod, vocab_size=tokenizer.vocab_size,
        eod_mask_loss=eod_mask_loss, reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask, cache_dir=cache_dir or default_cache_dir(prefixes[0]),
    )
    indexed = [IndexedDataset(prefix) for prefix in prefixes]
    ranges = [split_document_ranges(split, len(dataset)) for dataset in indexed]

    datasets = []
    for split_number, name in enumerate(SPLIT_NAMES):
        num_samples = train_valid_test_num_samples[split_number]
        if num_samples == 0:
            datasets.append(None)
            continue
        if len(prefixes) == 1:
            first, last = ranges[0][split_number]
            if first == last:
                logger.warning("%s split of %s has no documents (split %r over %d documents); no %s dataset",
                               name, prefixes[0], split, len(indexed[0]), name)
                datasets.append(None)
                continue
            datasets.append(GPTDataset(name, indexed[0], (first, last), num_samples, config, barrier, rank))
            continue
        if num_samples is None:
            raise ValueError(f"a blend of {len(prefixes)} datasets needs an explicit number of {name} samples")
        dataset_index, dataset_sample_index, _ = load_or_build_blending_indices(
            weights, num_samples, config.cache_dir, barrier, rank
        )
        # Each component is built for exactly as many samples as the schedule draws from it.
        draws = np.bincount(np.asarray(dataset_index), minlength=len(prefixes))
        components = []
        for k, (dataset, prefix) in enumerate(zip(indexed, prefixes)):
            first, last = ranges[k][split_number]
            if first == last:
                raise ValueError(
                    f"the {name} split of {prefix} has no documents (split {split!r} over {len(dataset)} "
                    f"documents), but the blend draws {draws[k]} {name} samples from it; change the split or "
                    "the blend"
                )
            components.append(GPTDataset(name, dataset, (first, last), max(int(draws[k]), 1), config, barrier, rank))
        datasets.append(BlendedDataset(components, dataset_index, dataset_sample_index))
    return tuple(datasets)
