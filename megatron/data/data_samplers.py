"""Data-parallel batch sampling and the pretraining DataLoader."""

from __future__ import annotations

import signal
from typing import Iterator, Optional

import torch


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class MegatronPretrainingSampler:
    """Yields this DP rank's micro-batches of sample indices, in order, starting at `consumed_samples`.

    Samples are taken sequentially in global slices of micro_batch_size * data_parallel_size; DP rank r gets
    the r-th micro_batch_size piece of each slice. Because the position in the sequence is all the state, a run
    resumed with the consumed_samples of a checkpoint sees exactly the samples an uninterrupted run would have.
    The dataset's own shuffle index provides the randomness. An incomplete final slice is dropped unless
    drop_last=False (then each rank gets its share of what is left, possibly nothing).
    """

    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        drop_last: bool = True,
    ):
        _check_positive_int("total_samples", total_samples)
        _check_positive_int("micro_batch_size", micro_batch_size)
        _check_positive_int("data_parallel_size", data_parallel_size)
        if isinstance(consumed_samples, bool) or not isinstance(consumed_samples, int) or consumed_samples < 0:
            raise ValueError(f"consumed_samples must be a non-negative integer, got {consumed_samples!r}")
        if consumed_samples >= total_samples:
            raise ValueError(
                f"consumed_samples ({consumed_samples}) is not below the dataset's {total_samples} samples: "
                "the data is exhausted; build the datasets for more samples (train_iters * global batch)"
            )
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data_parallel_rank {data_parallel_rank} is outside [0, {data_parallel_size})")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.global_slice = micro_batch_size * data_parallel_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        """Micro-batches this sampler yields."""
        remaining = self.total_samples - self.consumed_samples
        full, rest = divmod(remaining, self.global_slice)
        start = self.data_parallel_rank * self.micro_batch_size
        return full + int(not self.drop_last and rest > start)

    def __iter__(self) -> Iterator[list[int]]:
        start = self.data_parallel_rank * self.micro_batch_size
        for slice_start in range(self.consumed_samples, self.total_samples, self.global_slice):
            slice_end = min(slice_start + self.global_slice, self.total_samples)
            if slice_end - slice_start < self.global_slice:
                if self.drop_last:
                    return
                # Last partial slice: this rank's piece may be short or empty.
                mine = list(range(slice_start + start, min(slice_start + start + self.micro_batch_size, slice_end)))
                if mine:
                    yield mine
                return
            yield list(range(slice_start + start, slice_start + start + self.micro_batch_size))


def collate_samples(samples: list[dict]) -> dict:
    """Stack per-sample tensors: [s] -> [b, s]; attention_mask [1, s, s] -> [b, 1, s, s]."""
    keys = samples[0].keys()
    for sample in samples[1:]:
        if sample.keys() != keys:
            raise ValueError(f"samples of one batch have different fields: {sorted(keys)} vs {sorted(sample.keys())}")
    return {key: torch.stack([sample[key] for sample in samples]) for key in keys}


def ignore_exit_signals(worker_id: int):
    """DataLoader ``worker_init_fn``: a scheduler's SIGTERM or a Ctrl-C reaches the whole process group, and
    workers that died of it made the rank crash ("DataLoader worker ... killed by signal") before it could
    save. Workers ignore both; the rank handles them, and its workers end with it (torch's workers exit when
    their parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_pretraining_data_loader(
    dataset: Optional[torch.utils.data.Dataset],
    consumed_samples: int,
    micro_batch_size: int,
    data_parallel_rank: int,
    data_parallel_size: int,
    num_workers: int = 0,
) -> Optional[torch.utils.data.DataLoader]:
    """A DataLoader over this DP rank's micro-batches, resuming after `consumed_samples`; None for no dataset."""
    if dataset is None:
        return None
    sampler = MegatronPretrainingSampler(
        total_samples=len(dataset), consumed_samples=consumed_samples, micro_batch_size=micro_batch_size,
        data_parallel_rank=data_parallel_rank, data_parallel_size=data_parallel_size,
    )
    # Creating a DataLoader iterator draws a worker base seed from the given generator. Without one it would
    # draw from torch's global RNG and shift dropout masks, breaking bit-identical resume. Samples do not
    # depend on it (the sampler and the dataset are deterministic).
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_samples,
        persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0),
        worker_init_fn=ignore_exit_signals if num_workers > 0 else None,
    )
