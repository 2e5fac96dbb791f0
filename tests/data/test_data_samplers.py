"""DP sampling: exact resume from consumed_samples, disjoint ranks covering each global batch, collated shapes."""

import numpy as np
import pytest
import torch

from megatron.data.data_samplers import MegatronPretrainingSampler, build_pretraining_data_loader
from megatron.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter

EOD = 0


def test_ranks_split_every_global_batch_disjointly_and_completely():
    micro, dp, total = 3, 4, 100
    per_rank = [list(MegatronPretrainingSampler(total, 0, micro, rank, dp)) for rank in range(dp)]
    assert len({len(batches) for batches in per_rank}) == 1 and len(per_rank[0]) == total // (micro * dp)
    for step in range(len(per_rank[0])):
        global_batch = [i for rank in range(dp) for i in per_rank[rank][step]]
        # Sequential global slices; rank r takes the r-th micro-batch piece of each.
        assert global_batch == list(range(step * micro * dp, (step + 1) * micro * dp))
        assert all(len(per_rank[rank][step]) == micro for rank in range(dp))


@pytest.mark.parametrize("consumed", [0, 12, 24, 60])
def test_resuming_from_consumed_samples_continues_the_uninterrupted_run(consumed):
    micro, dp, total = 2, 3, 97
    for rank in range(dp):
        uninterrupted = list(MegatronPretrainingSampler(total, 0, micro, rank, dp))
        resumed = list(MegatronPretrainingSampler(total, consumed, micro, rank, dp))
        steps_done = consumed // (micro * dp)
        assert resumed == uninterrupted[steps_done:]
        assert len(MegatronPretrainingSampler(total, consumed, micro, rank, dp)) == len(resumed)


def test_partial_last_slice_is_dropped_unless_asked():
    assert list(MegatronPretrainingSampler(10, 0, 2, 1, 2)) == [[2, 3], [6, 7]]
    kept = [list(MegatronPretrainingSampler(10, 0, 2, rank, 2, drop_last=False)) for rank in range(2)]
    assert kept == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7]]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(consumed_samples=10), "data is exhausted"),
    (dict(data_parallel_rank=2), "outside \\[0, 2\\)"),
    (dict(micro_batch_size=0), "micro_batch_size must be a positive integer"),
    (dict(consumed_samples=-1), "consumed_samples must be a non-negative integer"),
])
def test_sampler_rejects_bad_arguments(kwargs, message):
    arguments = dict(total_samples=10, consumed_samples=0, micro_batch_size=2, data_parallel_rank=0,
                     data_parallel_size=2)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MegatronPretrainingSampler(**arguments)


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.RandomState(0)
    with IndexedDatasetWriter(str(tmp_path / "d"), np.uint16) as writer:
        for _ in range(60):
            writer.add_document(np.append(rng.randint(1, 50, size=rng.randint(1, 12)), EOD))
    config = GPTDatasetConfig(seq_length=8, seed=3, eod=EOD, vocab_size=50, reset_attention_mask=True,
                              reset_position_ids=True, eod_mask_loss=True, cache_dir=str(tmp_path / "cache"))
    return GPTDataset("train", IndexedDataset(str(tmp_path / "d")), (0, 60), 64, config)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_data_loader_yields_this_ranks_collated_micro_batches(dataset, num_workers):
    loader = build_pretraining_data_loader(dataset, consumed_samples=8, micro_batch_size=2, data_parallel_rank=1,
                                           data_parallel_size=2, num_workers=num_workers)
    batches = list(loader)
    assert len(batches) == (len(dataset) - 8) // 4
    first = batches[0]
    assert first["tokens"].shape == (2, 8) and first["tokens"].dtype == torch.int64
    assert first["labels"].shape == (2, 8) and first["position_ids"].shape == (2, 8)
    assert first["loss_mask"].shape == (2, 8) and first["loss_mask"].dtype == torch.float32
    assert first["attention_mask"].shape == (2, 1, 8, 8) and first["attention_mask"].dtype == torch.bool
    # Rank 1 of 2 after 8 consumed samples: global slice 8..11, its piece is samples 10 and 11.
    for row, index in enumerate((10, 11)):
        expected = dataset[index]
        for key in expected:
            assert torch.equal(first[key][row], expected[key]), key


def test_no_dataset_gives_no_loader():
    assert build_pretraining_data_loader(None, 0, 2, 0, 1) is None
