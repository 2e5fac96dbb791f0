"""The .bin/.idx files are byte for byte Megatron-LM's MMapIndexedDataset format, and the reader rejects damage."""

import struct

import numpy as np
import pytest

from megatron.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter, encode_index, token_dtype_for_vocab

DOCUMENTS = [[5, 6, 7], [1], [9, 9, 9, 9, 0], [300, 65000]]


def expected_index_bytes(dtype_code, itemsize, documents):
    """The .idx written out field by field from the format's definition."""
    sizes = [len(d) for d in documents]
    pointers, offset = [], 0
    for size in sizes:
        pointers.append(offset)
        offset += size * itemsize
    out = b"MMIDIDX\x00\x00"
    out += struct.pack("<Q", 1)  # version
    out += struct.pack("<B", dtype_code)
    out += struct.pack("<Q", len(documents))  # sequence count
    out += struct.pack("<Q", len(documents) + 1)  # document count
    out += struct.pack(f"<{len(sizes)}i", *sizes)
    out += struct.pack(f"<{len(pointers)}q", *pointers)
    out += struct.pack(f"<{len(documents) + 1}q", *range(len(documents) + 1))  # one sequence per document
    return out


@pytest.mark.parametrize("dtype, code, struct_format", [(np.uint16, 8, "H"), (np.int32, 4, "i")])
def test_written_files_match_the_format_byte_for_byte(tmp_path, dtype, code, struct_format):
    prefix = str(tmp_path / "data")
    with IndexedDatasetWriter(prefix, dtype) as writer:
        for document in DOCUMENTS:
            writer.add_document(np.array(document))
    with open(prefix + ".idx", "rb") as f:
        assert f.read() == expected_index_bytes(code, np.dtype(dtype).itemsize, DOCUMENTS)
    tokens = [t for d in DOCUMENTS for t in d]
    with open(prefix + ".bin", "rb") as f:
        assert f.read() == struct.pack(f"<{len(tokens)}{struct_format}", *tokens)

    dataset = IndexedDataset(prefix)
    assert dataset.dtype == np.dtype(dtype) and len(dataset) == 4 and dataset.num_documents == 4
    assert [list(dataset[i]) for i in range(4)] == DOCUMENTS
    assert list(dataset.get(2, offset=1, length=3)) == [9, 9, 9]
    assert list(dataset.sizes) == [3, 1, 5, 2]
    assert list(dataset.document_index) == [0, 1, 2, 3, 4]


def test_reader_accepts_an_index_with_several_sequences_per_document(tmp_path):
    # Megatron's sentence-split datasets: document 0 = sequences 0-1, document 1 = sequence 2.
    prefix = str(tmp_path / "sentences")
    with open(prefix + ".idx", "wb") as f:
        f.write(encode_index(np.int32, np.array([2, 1, 3]), np.array([0, 2, 3])))
    np.array([1, 2, 3, 4, 5, 6], dtype="<i4").tofile(prefix + ".bin")
    dataset = IndexedDataset(prefix)
    assert dataset.num_documents == 2 and [list(dataset[i]) for i in range(3)] == [[1, 2], [3], [4, 5, 6]]


def test_token_dtype_follows_megatron_rule():
    assert token_dtype_for_vocab(32000) == np.uint16
    assert token_dtype_for_vocab(65499) == np.uint16
    assert token_dtype_for_vocab(65500) == np.int32


@pytest.fixture
def good_prefix(tmp_path):
    prefix = str(tmp_path / "good")
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for document in DOCUMENTS:
            writer.add_document(np.array(document))
    return prefix


def _truncate(path, remove_bytes):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-remove_bytes])
    return len(data)


def test_truncated_bin_names_file_and_byte_counts(good_prefix):
    full = _truncate(good_prefix + ".bin", 2)
    with pytest.raises(ValueError, match=rf"good\.bin' is {full - 2} bytes, but .* describes {full} bytes"):
        IndexedDataset(good_prefix)


def test_truncated_idx_names_file_and_byte_counts(good_prefix):
    full = _truncate(good_prefix + ".idx", 8)
    with pytest.raises(ValueError, match=rf"good\.idx' is {full - 8} bytes, .* needs {full} bytes"):
        IndexedDataset(good_prefix)
    _truncate(good_prefix + ".idx", full - 8 - 20)  # only 20 bytes left: not even a header
    with pytest.raises(ValueError, match="truncated: 20 bytes, but the header alone is 34"):
        IndexedDataset(good_prefix)


@pytest.mark.parametrize(
    "offset, value, message",
    [(0, b"XXIDIDX\x00\x00", "magic"), (9, struct.pack("<Q", 2), "version 2"), (17, b"\x09", "dtype code 9")],
)
def test_corrupt_header_fields_are_named(good_prefix, offset, value, message):
    with open(good_prefix + ".idx", "r+b") as f:
        f.seek(offset)
        f.write(value)
    with pytest.raises(ValueError, match=message):
        IndexedDataset(good_prefix)


def test_missing_files_point_at_the_preprocessing_tool(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocess_data.py"):
        IndexedDataset(str(tmp_path / "nothing"))


def test_interrupted_writer_leaves_no_files(tmp_path):
    prefix = str(tmp_path / "partial")
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(prefix, np.uint16) as writer:
            writer.add_document(np.array([1, 2]))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
