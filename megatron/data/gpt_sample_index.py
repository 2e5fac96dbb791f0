"""The three index arrays behind a GPT dataset, built in numpy exactly as Megatron-LM defines them.

A GPT dataset reads its documents as one endless token stream: epoch after epoch, each epoch the split's
documents in a freshly shuffled order (`document index`). Sample i is the `seq_length + 1` tokens starting at
stream position i * seq_length (the last token of a sample is the first of the next, because labels are the
tokens shifted by one). The `sample index` records where each sample starts as (position in the document
index, token offset in that document); the `shuffle index` is the order in which samples are served.

Given the same inputs and seed, these match Megatron-LM's `_build_index_mappings` (same RandomState draws in the
same order), with the C++ `build_sample_idx` loop replaced by a vectorized search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Megatron's rule: if the last epoch would contribute fewer than 80% of an epoch's samples, it is shuffled
# separately, so that those few samples are not drawn from (and do not crowd out) a whole epoch's worth.
LAST_EPOCH_SEPARATE_BELOW = 0.80


def num_epochs_needed(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Fewest epochs whose token stream holds `num_samples` samples: (epochs * tokens - 1) // seq >= samples."""
    assert tokens_per_epoch > 0 and seq_length > 0 and num_samples > 0
    return max(1, -(-(num_samples * seq_length + 1) // tokens_per_epoch))


def samples_in_stream(num_tokens: int, seq_length: int) -> int:
    # The final sample needs one token beyond its seq_length for the last label.
    return (num_tokens - 1) // seq_length


@dataclass(frozen=True)
class EpochPlan:
    num_epochs: int
    separate_last_epoch: bool
    num_samples_to_shuffle_jointly: int  # samples of all epochs but a separate last one


def plan_epochs(tokens_per_epoch: int, seq_length: int, num_samples: int) -> EpochPlan:
    num_epochs = num_epochs_needed(tokens_per_epoch, seq_length, num_samples)
    total = samples_in_stream(num_epochs * tokens_per_epoch, seq_length)
    if num_epochs == 1:
        return EpochPlan(1, False, total)
    before_last = samples_in_stream((num_epochs - 1) * tokens_per_epoch, seq_length)
    last_epoch_samples = num_samples - before_last
    samples_per_epoch = samples_in_stream(tokens_per_epoch, seq_length)
    separate = last_epoch_samples < int(LAST_EPOCH_SEPARATE_BELOW * samples_per_epoch)
    return EpochPlan(num_epochs, separate, before_last if separate else total)


def build_document_index(
    documents: np.ndarray, num_epochs: int, rng: np.random.RandomState, separate_last_epoch: bool
) -> np.ndarray:
    """Document ids for every epoch, concatenated; shuffled across all epochs, or the last one on its own."""
    if separate_last_epoch and num_epochs > 1:
        return np.concatenate([
            build_document_index(documents, num_epochs - 1, rng, False),
            build_document_index(documents, 1, rng, False),
        ])
    document_index = np.tile(np.asarray(documents, dtype=np.int32), num_epochs)  # [epochs * docs]
    rng.shuffle(document_index)
    return document_index


def build_sample_index(sizes: np.ndarray, document_index: np.ndarray, seq_length: int) -> np.ndarray:
    """[num_samples + 1, 2]: row i = (position in document_index, token offset) of stream token i * seq_length.

    Row i + 1 is where sample i ends (inclusive), so sample i spans rows i..i+1.
    """
    lengths = np.asarray(sizes, dtype=np.int64)[document_index]  # [epochs * docs] tokens, stream order
    ends = np.cumsum(lengths)  # stream position just past each document
    num_samples = samples_in_stream(int(ends[-1]), seq_length)
    positions = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    # The document holding a position is the first whose end lies beyond it ("right" skips empty documents).
    holder = np.searchsorted(ends, positions, side="right")
    offsets = positions - (ends[holder] - lengths[holder])
    dtype = np.int32 if len(document_index) < 2**31 and int(lengths.max()) < 2**31 else np.int64
    return np.stack([holder, offsets], axis=1).astype(dtype)


def build_shuffle_index(
    num_samples_shuffled_jointly: int, total_samples: int, rng: np.random.RandomState
) -> np.ndarray:
    """A permutation of range(total_samples): the first part shuffled among itself, then the (separate) rest."""
    dtype = np.uint32 if total_samples < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_samples_shuffled_jointly, dtype=dtype)
    rng.shuffle(first)
    if num_samples_shuffled_jointly == total_samples:
        return first
    last = np.arange(num_samples_shuffled_jointly, total_samples, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate([first, last])


def build_gpt_indices(sizes: np.ndarray, documents: np.ndarray, seq_length: int, num_samples: int, seed: int) -> dict:
    """Document, sample and shuffle index for `num_samples` samples over `documents` (ids into `sizes`)."""
    tokens_per_epoch = int(np.asarray(sizes, dtype=np.int64)[documents].sum())
    plan = plan_epochs(tokens_per_epoch, seq_length, num_samples)
    rng = np.random.RandomState(seed)
    document_index = build_document_index(documents, plan.num_epochs, rng, plan.separate_last_epoch)
    sample_index = build_sample_index(sizes, document_index, seq_length)
    shuffle_index = build_shuffle_index(plan.num_samples_to_shuffle_jointly, len(sample_index) - 1, rng)
    return {"document_index": document_index, "sample_index": sample_index, "shuffle_index": shuffle_index}
