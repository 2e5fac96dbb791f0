"""Megatron-LM's memory-mapped indexed dataset (`MMapIndexedDataset`): a `.bin` of tokens and an `.idx` index.

`.idx` layout, all little-endian, exactly what Megatron-LM's reader expects:

    offset  size          field
    0       9             magic b"MMIDIDX\\x00\\x00"
    9       8             version, uint64 = 1
    17      1             dtype code, uint8 (DTYPE_CODES below)
    18      8             sequence count n, uint64
    26      8             document count d, uint64 (= number of documents + 1)
    34      4 n           sizes, int32: tokens per sequence
    34+4n   8 n           pointers, int64: byte offset of each sequence in .bin
    34+12n  8 d           document index, int64: 0, then the sequence count at each document's end

`.bin` is the token arrays of all sequences back to back. Preprocessing writes one sequence per document.
"""

from __future__ import annotations

import os
import struct
import uuid
from typing import Optional

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_BYTES = len(INDEX_MAGIC) + 8 + 1 + 8 + 8  # = 34
DTYPE_CODES = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}


def index_file_path(prefix: str) -> str:
    return prefix + ".idx"


def data_file_path(prefix: str) -> str:
    return prefix + ".bin"


def token_dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Megatron's choice: uint16 while every id fits with room to spare (vocab < 65500), else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def max_token_id_of_dtype(dtype: np.dtype) -> Optional[int]:
    """Largest token id `dtype` can store, or None for float dtypes (which cannot store token ids)."""
    return int(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else None


def encode_index(dtype: np.dtype, sizes: np.ndarray, document_index: np.ndarray) -> bytes:
    """The .idx bytes for sequences of `sizes` tokens of `dtype`, grouped into documents by `document_index`."""
    dtype = np.dtype(dtype)
    if dtype not in CODE_OF_DTYPE:
        raise ValueError(f"dtype {dtype} has no Megatron code; use one of {sorted(map(str, CODE_OF_DTYPE))}")
    sizes = np.asarray(sizes, dtype=np.int64)
    # Byte offset of each sequence: exclusive cumulative sum of its byte length.
    pointers = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1] * dtype.itemsize, out=pointers[1:])
    header = INDEX_MAGIC + struct.pack("<QBQQ", INDEX_VERSION, CODE_OF_DTYPE[dtype], len(sizes), len(document_index))
    return b"".join((
        header,
        sizes.astype("<i4").tobytes(),
        pointers.astype("<i8").tobytes(),
        np.asarray(document_index, dtype="<i8").tobytes(),
    ))


def _replace_atomically(temporary: str, final: str) -> None:
    with open(temporary, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temporary, final)


class IndexedDatasetWriter:
    """Streams documents into `{prefix}.bin`, then writes `{prefix}.idx` on `finalize()`.

    Both files are written under temporary names and renamed at the end, so an interrupted run never leaves
    a pair that looks valid. Use as a context manager: an exception removes the temporaries.
    """

    def __init__(self, prefix: str, dtype: np.dtype):
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"dtype {self.dtype} has no Megatron code; use one of {sorted(map(str, CODE_OF_DTYPE))}")
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._bin_temporary = data_file_path(prefix) + tag
        self._idx_temporary = index_file_path(prefix) + tag
        self._bin = open(self._bin_temporary, "wb")
        self._sizes: list[int] = []
        self.num_tokens = 0

    def add_document(self, tokens: np.ndarray) -> None:
        """Append one document, stored as one sequence."""
        tokens = np.asarray(tokens)
        assert tokens.ndim == 1, f"a document is a 1-D token array, got shape {tokens.shape}"
        self._bin.write(tokens.astype(self.dtype, copy=False).tobytes(order="C"))
        self._sizes.append(len(tokens))
        self.num_tokens += len(tokens)

    @property
    def num_documents(self) -> int:
        return len(self._sizes)

    def finalize(self) -> None:
        self._bin.close()
        sizes = np.asarray(self._sizes, dtype=np.int64)
        document_index = np.arange(len(sizes) + 1, dtype=np.int64)  # one sequence per document
        with open(self._idx_temporary, "wb") as f:
            f.write(encode_index(self.dtype, sizes, document_index))
        _replace_atomically(self._bin_temporary, data_file_path(self.prefix))
        _replace_atomically(self._idx_temporary, index_file_path(self.prefix))

    def abort(self) -> None:
        self._bin.close()
        for path in (self._bin_temporary, self._idx_temporary):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def _map_array(path: str, dtype: str, offset: int, count: int) -> np.ndarray:
    # np.memmap refuses zero-length maps; an empty array is the same thing to every reader.
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


class IndexedDataset:
    """Read-only view of a `.bin`/`.idx` pair through numpy memory maps.

    Every header field and both file sizes are checked on open, so a truncated or foreign file fails here with
    the file name and the expected vs actual byte counts, not later as garbage tokens.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._open()

    def _open(self) -> None:
        idx_path, bin_path = index_file_path(self.prefix), data_file_path(self.prefix)
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"indexed dataset file {path!r} does not exist; create it with tools/preprocess_data.py "
                    "(a data prefix names the files without .bin/.idx)"
                )
        idx_bytes = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            header = f.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            raise ValueError(
                f"index file {idx_path!r} is truncated: {idx_bytes} bytes, but the header alone is {HEADER_BYTES}"
            )
        if header[: len(INDEX_MAGIC)] != INDEX_MAGIC:
            raise ValueError(
                f"index file {idx_path!r} does not start with Megatron's magic {INDEX_MAGIC!r} "
                f"(found {header[:len(INDEX_MAGIC)]!r}); it is not an MMapIndexedDataset index"
            )
        version, code, num_sequences, num_document_entries = struct.unpack("<QBQQ", header[len(INDEX_MAGIC):])
        if version != INDEX_VERSION:
            raise ValueError(
                f"index file {idx_path!r} has version {version}; only version {INDEX_VERSION} is supported"
            )
        if code not in DTYPE_CODES:
            raise ValueError(
                f"index file {idx_path!r} has dtype code {code}, which is not one of Megatron's codes "
                f"{sorted(DTYPE_CODES)}"
            )
        self.dtype = DTYPE_CODES[code]
        expected_idx_bytes = HEADER_BYTES + 12 * num_sequences + 8 * num_document_entries
        if idx_bytes != expected_idx_bytes:
            raise ValueError(
                f"index file {idx_path!r} is {idx_bytes} bytes, but its header ({num_sequences} sequences, "
                f"{num_document_entries} document entries) needs {expected_idx_bytes} bytes: the file is "
                "truncated or corrupt; re-run tools/preprocess_data.py"
            )
        self.sizes = _map_array(idx_path, "<i4", HEADER_BYTES, num_sequences)
        self.pointers = _map_array(idx_path, "<i8", HEADER_BYTES + 4 * num_sequences, num_sequences)
        self.document_index = _map_array(idx_path, "<i8", HEADER_BYTES + 12 * num_sequences, num_document_entries)
        self._check_index_consistency(idx_path)

        expected_bin_bytes = int(self.sizes.sum(dtype=np.int64)) * self.dtype.itemsize
        bin_bytes = os.path.getsize(bin_path)
        if bin_bytes != expected_bin_bytes:
            raise ValueError(
                f"data file {bin_path!r} is {bin_bytes} bytes, but its index {idx_path!r} describes "
                f"{expected_bin_bytes} bytes ({expected_bin_bytes // self.dtype.itemsize} tokens of {self.dtype}): "
                "the .bin is truncated or belongs to another .idx; re-run tools/preprocess_data.py"
            )
        # np.memmap cannot map an empty file; a dataset of empty documents has nothing to map.
        if bin_bytes == 0:
            self._tokens = np.zeros(0, dtype=self.dtype)
        else:
            self._tokens = np.memmap(bin_path, dtype=self.dtype.newbyteorder("<"), mode="r")

    def _check_index_consistency(self, idx_path: str) -> None:
        n = len(self.sizes)
        if n and int(self.sizes.min()) < 0:
            raise ValueError(f"index file {idx_path!r} has negative sequence sizes; it is corrupt")
        expected_pointers = np.zeros(n, dtype=np.int64)
        np.cumsum(np.asarray(self.sizes[:-1], dtype=np.int64) * self.dtype.itemsize, out=expected_pointers[1:])
        if not np.array_equal(expected_pointers, self.pointers):
            raise ValueError(f"index file {idx_path!r}: pointers do not match the sizes; it is corrupt")
        doc = self.document_index
        if len(doc) == 0 or doc[0] != 0 or doc[-1] != n or (len(doc) > 1 and np.any(np.diff(doc) < 0)):
            raise ValueError(
                f"index file {idx_path!r}: the document index must rise from 0 to the sequence count {n}; it is corrupt"
            )

    def __len__(self) -> int:
        """Number of sequences (= documents for data written by tools/preprocess_data.py)."""
        return len(self.sizes)

    @property
    def num_documents(self) -> int:
        return len(self.document_index) - 1

    @property
    def num_tokens(self) -> int:
        return len(self._tokens)

    def get(self, index: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens `offset : offset + length` of sequence `index` (a read-only view into the memory map)."""
        size = int(self.sizes[index])
        if length is None:
            length = size - offset
        assert 0 <= offset and offset + length <= size, (index, offset, length, size)
        start = int(self.pointers[index]) // self.dtype.itemsize + offset
        return self._tokens[start : start + length]

    def __getitem__(self, index: int) -> np.ndarray:
        return self.get(index)

    def all_tokens(self) -> np.ndarray:
        """Every token of the dataset in storage order (a memory-mapped view)."""
        return self._tokens

    # Memory maps are not picklable; DataLoader workers (spawn) reopen the files instead.
    def __getstate__(self):
        return {"prefix": self.prefix}

    def __setstate__(self, state):
        self.prefix = state["prefix"]
        self._open()


# Megatron-LM's name for this reader.
MMapIndexedDataset = IndexedDataset
