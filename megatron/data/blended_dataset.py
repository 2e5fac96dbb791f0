"""Weighted blending of several datasets, with Megatron's exact greedy schedule."""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from megatron.data.index_cache import CachedArrays


def parse_data_path(data_path: Union[str, Sequence[str]]) -> tuple[list[str], list[float]]:
    """`["0.7", "a", "0.3", "b"]` (or the same as one space-separated string) -> (["a", "b"], [0.7, 0.3]).

    A single prefix gets weight 1. Weights are normalized to sum to 1.
    """
    items = data_path.split() if isinstance(data_path, str) else [str(item) for item in data_path]
    if not items:
        raise ValueError("data_path is empty; give a data prefix, or weight/prefix pairs like ['0.7', 'a', '0.3', 'b']")
    if len(items) == 1:
        return items, [1.0]
    if len(items) % 2:
        raise ValueError(
            f"data_path {items} has {len(items)} entries; a blend is weight/prefix pairs like "
            "['0.7', 'a', '0.3', 'b'] (or give a single prefix)"
        )
    weights, prefixes = [], []
    for weight_text, prefix in zip(items[0::2], items[1::2]):
        try:
            weight = float(weight_text)
        except ValueError:
            raise ValueError(
                f"data_path weight {weight_text!r} (before prefix {prefix!r}) is not a number; a blend is "
                "weight/prefix pairs like ['0.7', 'a', '0.3', 'b']"
            ) from None
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(
                f"data_path weight {weight_text!r} for {prefix!r} must be a positive number; drop the dataset "
                "from the blend instead of giving it weight 0"
            )
        weights.append(weight)
        prefixes.append(prefix)
    total = sum(weights)
    return prefixes, [w / total for w in weights]


def build_blending_indices(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of `size` samples: which dataset it comes from, and which sample of that dataset.

    Megatron's greedy rule: at step t, draw from the dataset whose count lags furthest behind weight * t
    (ties go to the lower index). Every prefix of the schedule is then within one sample of exact proportions.
    """
    weights = [float(w) for w in weights]
    dataset_index = np.empty(size, dtype=np.int16 if len(weights) < 2**15 else np.int64)
    dataset_sample_index = np.empty(size, dtype=np.int64)
    drawn = [0] * len(weights)
    choices = range(len(weights))
    # A plain Python loop: the rule is sequential and lists of floats beat numpy scalars here (~1M steps/s).
    for step in range(size):
        t = max(step, 1)
        best = max(choices, key=lambda i: weights[i] * t - drawn[i])
        dataset_index[step] = best
        dataset_sample_index[step] = drawn[best]
        drawn[best] += 1
    return dataset_index, dataset_sample_index


def load_or_build_blending_indices(
    weights: Sequence[float],
    size: int,
    cache_dir: str,
    barrier: Optional[Callable[[], None]] = None,
    rank: int = 0,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """`build_blending_indices`, cached (a 10M-sample schedule takes ~10 s to build). Returns the two arrays
    and whether this call built them. The schedule depends on nothing but the weights and the size."""
    cache = CachedArrays(
        cache_dir, "blend", {"kind": "blend", "weights": [float(w) for w in weights], "size": int(size)},
        ("dataset_index", "dataset_sample_index"),
    )

    def build() -> dict:
        dataset_index, dataset_sample_index = build_blending_indices(weights, size)
        return {"dataset_index": dataset_index, "dataset_sample_index": dataset_sample_index}

    arrays = cache.load_or_build(build, barrier, rank)
    return arrays["dataset_index"], arrays["dataset_sample_index"], cache.built


class BlendedDataset(torch.utils.data.Dataset):
    """Serves sample i from `datasets[dataset_index[i]]`, its sample `dataset_sample_index[i]`."""

    def __init__(self, datasets: Sequence[torch.utils.data.Dataset], dataset_index: np.ndarray,
                 dataset_sample_index: np.ndarray):
        assert len(dataset_index) == len(dataset_sample_index)
        self.datasets = list(datasets)
        self.dataset_index = dataset_index
        self.dataset_sample_index = dataset_sample_index
        for k, dataset in enumerate(self.datasets):
            drawn = np.asarray(dataset_sample_index)[np.asarray(dataset_index) == k]
            if len(drawn) and len(dataset) <= int(drawn.max()):
                raise ValueError(
                    f"blended dataset {k} has {len(dataset)} samples but the blend draws {int(drawn.max()) + 1}"
                )

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, index: int) -> dict:
        return self.datasets[int(self.dataset_index[index])][int(self.dataset_sample_index[index])]
