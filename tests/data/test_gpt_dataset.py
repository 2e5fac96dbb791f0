"""GPT dataset indices equal Megatron-LM's loops, samples are windows of the shuffled document stream."""

import numpy as np
import pytest

from megatron.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.data.gpt_sample_index import build_gpt_indices
from megatron.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter

EOD = 0


def megatron_reference_indices(sizes, documents, seq_length, num_samples, seed):
    """Megatron-LM's _build_index_mappings, with its C++ build_sample_idx, written as plain loops."""
    tokens_per_epoch = int(np.sum(sizes[documents]))
    num_epochs, total = 0, 0
    while True:
        num_epochs += 1
        total += tokens_per_epoch
        if (total - 1) // seq_length >= num_samples:
            break
    if num_epochs == 1:
        separate_last_epoch = False
    else:
        from_epochs_minus_one = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
        last_epoch_samples = num_samples - from_epochs_minus_one
        samples_per_epoch = (tokens_per_epoch - 1) // seq_length
        separate_last_epoch = last_epoch_samples < int(0.80 * samples_per_epoch)
    rng = np.random.RandomState(seed=seed)

    def doc_idx(epochs, separate):
        if not separate or epochs == 1:
            index = np.mgrid[0:epochs, 0:len(documents)][1]
            index[:] = documents
            index = index.reshape(-1).astype(np.int32)
            rng.shuffle(index)
            return index
        return np.concatenate((doc_idx(epochs - 1, False), doc_idx(1, False)))

    document_index = doc_idx(num_epochs, separate_last_epoch)
    n = (num_epochs * tokens_per_epoch - 1) // seq_length
    sample_index = np.zeros((n + 1, 2), dtype=np.int64)
    position, offset = 0, 0
    for i in range(1, n + 1):
        remaining = seq_length + 1
        while remaining != 0:
            length = sizes[document_index[position]] - offset
            remaining -= length
            if remaining <= 0:
                offset += remaining + length - 1
                remaining = 0
            else:
                position += 1
                offset = 0
        sample_index[i] = (position, offset)
    shuffled_jointly = from_epochs_minus_one if separate_last_epoch else n
    first = np.arange(shuffled_jointly, dtype=np.uint32)
    rng.shuffle(first)
    last = np.arange(shuffled_jointly, n, dtype=np.uint32)
    rng.shuffle(last)
    return document_index, sample_index, np.concatenate((first, last))


# Covers one epoch, several epochs shuffled jointly (seq 64, 40 samples: 6 epochs) and a separately shuffled
# last epoch (seq 7, 130 samples: 3 epochs; seq 64, 400 samples: 58 epochs).
@pytest.mark.parametrize("num_samples", [5, 40, 130, 400])
@pytest.mark.parametrize("seq_length", [1, 7, 64])
def test_indices_equal_megatron_reference(num_samples, seq_length):
    rng = np.random.RandomState(3)
    sizes = rng.randint(1, 40, size=30).astype(np.int32)
    documents = np.arange(4, 26)
    ours = build_gpt_indices(sizes, documents, seq_length, num_samples, seed=1234)
    document_index, sample_index, shuffle_index = megatron_reference_indices(sizes, documents, seq_length,
                                                                             num_samples, 1234)
    np.testing.assert_array_equal(ours["document_index"], document_index)
    np.testing.assert_array_equal(ours["sample_index"], sample_index)
    np.testing.assert_array_equal(ours["shuffle_index"], shuffle_index)
    assert len(ours["shuffle_index"]) >= num_samples


def write_dataset(prefix, documents, dtype=np.uint16):
    with IndexedDatasetWriter(str(prefix), dtype) as writer:
        for document in documents:
            writer.add_document(np.array(document))
    return IndexedDataset(str(prefix))


def random_documents(count, seed=0, vocab=100):
    rng = np.random.RandomState(seed)
    return [list(rng.randint(1, vocab, size=rng.randint(1, 30))) + [EOD] for _ in range(count)]


def test_samples_are_windows_of_the_document_stream(tmp_path):
    documents = random_documents(50)
    indexed = write_dataset(tmp_path / "d", documents)
    config = GPTDatasetConfig(seq_length=16, seed=7, eod=EOD, vocab_size=100, cache_dir=str(tmp_path / "cache"))
    dataset = GPTDataset("train", indexed, (10, 45), 200, config)  # needs several epochs
    stream = np.concatenate([documents[d] for d in dataset.document_index])
    assert sorted(set(dataset.document_index.tolist())) == list(range(10, 45))
    assert len(dataset) >= 200
    for k in range(len(dataset)):
        j = int(dataset.shuffle_index[k])
        np.testing.assert_array_equal(dataset.sample_tokens(k), stream[j * 16 : j * 16 + 17])
    sample = dataset[3]
    assert sample["tokens"].shape == (16,) and sample["labels"].shape == (16,)
    np.testing.assert_array_equal(sample["labels"][:-1], sample["tokens"][1:])


def test_one_epoch_default_and_determinism(tmp_path):
    indexed = write_dataset(tmp_path / "d", random_documents(30))
    config = GPTDatasetConfig(seq_length=8, seed=1, eod=EOD, cache_dir=str(tmp_path / "a"))
    tokens = int(np.sum(indexed.sizes))
    one_epoch = GPTDataset("train", indexed, (0, 30), None, config)
    assert len(one_epoch) == (tokens - 1) // 8
    again = GPTDataset("train", indexed, (0, 30), None,
                       GPTDatasetConfig(seq_length=8, seed=1, eod=EOD, cache_dir=str(tmp_path / "b")))
    np.testing.assert_array_equal(one_epoch.shuffle_index, again.shuffle_index)
    other_seed = GPTDataset("train", indexed, (0, 30), None,
                            GPTDatasetConfig(seq_length=8, seed=2, eod=EOD, cache_dir=str(tmp_path / "a")))
    assert not np.array_equal(one_epoch.shuffle_index, other_seed.shuffle_index)


def test_token_ids_beyond_the_tokenizer_vocab_are_an_error(tmp_path):
    indexed = write_dataset(tmp_path / "d", [[1, 2, 3, 77, EOD]] * 4)
    config = GPTDatasetConfig(seq_length=4, seed=1, eod=EOD, vocab_size=50, cache_dir=str(tmp_path / "c"))
    dataset = GPTDataset("train", indexed, (0, 4), 4, config)
    with pytest.raises(ValueError, match=r"holds token id 77, outside the tokenizer's vocabulary \[0, 50\)"):
        for k in range(len(dataset)):
            dataset[k]


def test_dtype_that_cannot_hold_the_vocab_is_an_error(tmp_path):
    narrow = write_dataset(tmp_path / "narrow", [[1, 2, 3, EOD]] * 4, dtype=np.uint8)
    config = GPTDatasetConfig(seq_length=4, seed=1, eod=EOD, vocab_size=1000, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"stored as uint8 \(max id 255\) but the tokenizer has 1000 ids"):
        GPTDataset("train", narrow, (0, 4), 4, config)
    floats = write_dataset(tmp_path / "floats", [[1, 2, 3, EOD]] * 4, dtype=np.float32)
    with pytest.raises(ValueError, match="float type"):
        GPTDataset("train", floats, (0, 4), 4, config)


def test_bad_ranges_and_sizes_are_errors(tmp_path):
    indexed = write_dataset(tmp_path / "d", random_documents(5))
    config = GPTDatasetConfig(seq_length=4, seed=1, eod=EOD, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"document range \[3, 9\) is empty or outside the 5 documents"):
        GPTDataset("train", indexed, (3, 9), 4, config)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        GPTDataset("train", indexed, (0, 5), 0, config)
    with pytest.raises(ValueError, match="seq_length must be a positive integer"):
        GPTDatasetConfig(seq_length=0, seed=1, eod=EOD)
