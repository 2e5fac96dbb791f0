"""Blending draws each corpus at its weight; data_path and split strings are parsed or rejected clearly."""

import numpy as np
import pytest

from megatron.data.blended_dataset import BlendedDataset, build_blending_indices, parse_data_path
from megatron.data.dataset_builder import build_train_valid_test_datasets, split_document_ranges
from megatron.data.gpt_dataset import GPTDataset
from megatron.data.indexed_dataset import IndexedDatasetWriter
from megatron.data.tokenizers import NullTokenizer

TOKENIZER = NullTokenizer(300)  # eod = 300
CORPUS_ID_RANGES = {"a": (1, 100), "b": (100, 200), "c": (200, 300)}  # each corpus uses its own token ids


def write_corpus(prefix, low, high, seed, count=200):
    rng = np.random.RandomState(seed)
    with IndexedDatasetWriter(str(prefix), np.uint16) as writer:
        for _ in range(count):
            writer.add_document(np.append(rng.randint(low, high, size=rng.randint(5, 40)), TOKENIZER.eod))
    return str(prefix)


@pytest.fixture
def corpora(tmp_path):
    return {name: write_corpus(tmp_path / name, low, high, seed)
            for seed, (name, (low, high)) in enumerate(CORPUS_ID_RANGES.items())}


def corpus_of(tokens):
    ids = tokens[tokens != TOKENIZER.eod]
    names = {name for name, (low, high) in CORPUS_ID_RANGES.items() if ((ids >= low) & (ids < high)).all()}
    assert len(names) == 1, "a sample mixes corpora"
    return names.pop()


def test_blend_draws_each_corpus_within_one_percent_of_its_weight(tmp_path, corpora):
    data_path = ["5", corpora["a"], "3", corpora["b"], "2", corpora["c"]]
    train, valid, test = build_train_valid_test_datasets(
        data_path, "98,2,0", seq_length=16, seed=5, train_valid_test_num_samples=[10_000, 50, 0],
        tokenizer=TOKENIZER, cache_dir=str(tmp_path / "cache"),
    )
    assert isinstance(train, BlendedDataset) and len(train) == 10_000 and len(valid) == 50 and test is None
    counts = {"a": 0, "b": 0, "c": 0}
    for k in range(len(train)):
        counts[corpus_of(train[k]["tokens"].numpy())] += 1
    for name, weight in zip("abc", (0.5, 0.3, 0.2)):
        assert abs(counts[name] / 10_000 - weight) <= 0.01 * weight, counts
    # Each component serves its own samples in order, none twice.
    for k in range(3):
        drawn = np.asarray(train.dataset_sample_index)[np.asarray(train.dataset_index) == k]
        np.testing.assert_array_equal(drawn, np.arange(len(drawn)))


def test_greedy_schedule_is_within_one_sample_of_exact_at_every_step():
    weights = [0.55, 0.25, 0.2]
    dataset_index, dataset_sample_index = build_blending_indices(weights, 3000)
    counts = np.zeros((3000, 3))
    counts[np.arange(3000), dataset_index] = 1
    drawn = np.cumsum(counts, axis=0)  # [steps, datasets]: draws so far
    ideal = np.arange(1, 3001)[:, None] * np.array(weights)[None, :]
    assert np.abs(drawn - ideal).max() <= 1.0
    assert dataset_index[:5].tolist() == [0, 1, 2, 0, 0]  # ties at step 0 and 1 go to the lower index


def test_single_prefix_gives_plain_gpt_datasets_over_its_split(tmp_path, corpora):
    train, valid, test = build_train_valid_test_datasets(
        corpora["a"], "969,30,1", seq_length=8, seed=1, train_valid_test_num_samples=[100, 10, 0],
        tokenizer=TOKENIZER, cache_dir=str(tmp_path / "cache"),
    )
    assert isinstance(train, GPTDataset) and isinstance(valid, GPTDataset) and test is None
    assert set(np.asarray(train.document_index).tolist()) == set(range(0, 194))
    assert set(np.asarray(valid.document_index).tolist()) == set(range(194, 200))
    assert len(train) >= 100 and len(valid) >= 10


def test_empty_split_gives_none_for_one_prefix_and_an_error_in_a_blend(tmp_path, corpora):
    small = write_corpus(tmp_path / "small", 1, 100, seed=9, count=10)
    _, _, test = build_train_valid_test_datasets(
        small, "969,30,1", 8, 1, [10, 0, 10], TOKENIZER, cache_dir=str(tmp_path / "cache"))
    assert test is None  # 0.1% of 10 documents is none
    with pytest.raises(ValueError, match=r"the test split of .*small has no documents"):
        build_train_valid_test_datasets(["1", small, "1", corpora["a"]], "969,30,1", 8, 1, [10, 0, 10], TOKENIZER,
                                        cache_dir=str(tmp_path / "cache"))


def test_parse_data_path_normalizes_weights():
    assert parse_data_path("only/prefix") == (["only/prefix"], [1.0])
    assert parse_data_path(["0.7", "a", "0.3", "b"]) == (["a", "b"], [0.7, 0.3])
    assert parse_data_path("2 a 6 b") == (["a", "b"], [0.25, 0.75])


@pytest.mark.parametrize("data_path, message", [
    (["0.7", "a", "-0.3", "b"], "weight '-0.3' for 'b' must be a positive number"),
    (["0.7", "a", "0", "b"], "weight '0' for 'b' must be a positive number"),
    (["0.7", "a", "lots", "b"], "weight 'lots' \\(before prefix 'b'\\) is not a number"),
    (["0.7", "a", "b"], "has 3 entries"),
    (["nan", "a", "1", "b"], "must be a positive number"),
    ([], "data_path is empty"),
])
def test_bad_blend_weights_are_rejected(data_path, message):
    with pytest.raises(ValueError, match=message):
        parse_data_path(data_path)


def test_split_ranges_follow_megatron_rounding():
    assert split_document_ranges("969,30,1", 1000) == [(0, 969), (969, 999), (999, 1000)]
    assert split_document_ranges("969, 30, 1", 100) == [(0, 97), (97, 100), (100, 100)]
    assert split_document_ranges("8/1/1", 10) == [(0, 8), (8, 9), (9, 10)]
    assert split_document_ranges("1", 7) == [(0, 7), (7, 7), (7, 7)]
    for bad in ("a,b", "1,2,3,4", "-1,2", "0,0,0"):
        with pytest.raises(ValueError, match="split"):
            split_document_ranges(bad, 10)
