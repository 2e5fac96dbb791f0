"""GPTDataset: fixed-length training samples cut from the token stream of an indexed dataset's documents."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from megatron.data.gpt_sample_index import build_gpt_indices
from megatron.data.index_cache import CachedArrays, hash_file_contents
from megatron.data.indexed_dataset import IndexedDataset, index_file_path, max_token_id_of_dtype
from megatron.data.sample_masks import make_sample


@dataclass(frozen=True)
class GPTDatasetConfig:
    seq_length: int  # tokens fed to the model per sample; each sample reads seq_length + 1 (labels shift by one)
    seed: int  # seeds the document and sample shuffles
    eod: int  # end-of-document id (tokenizer.eod)
    vocab_size: Optional[int] = None  # tokenizer vocabulary; every token id must be below it (None: unchecked)
    eod_mask_loss: bool = False  # loss_mask = 0 where the input token is EOD (do not predict across documents)
    reset_position_ids: bool = False  # position ids restart at 0 after every EOD
    reset_attention_mask: bool = False  # tokens attend only within their own document (adds attention_mask)
    cache_dir: Optional[str] = None  # where index .npy files go; default: `index-cache` next to the data

    def __post_init__(self):
        if isinstance(self.seq_length, bool) or not isinstance(self.seq_length, int) or self.seq_length < 1:
            raise ValueError(f"seq_length must be a positive integer, got {self.seq_length!r}")


def default_cache_dir(data_prefix: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(data_prefix)), "index-cache")


_idx_hashes: dict = {}  # (path, size, mtime_ns) -> sha256: hash each index file once per process


def _index_fingerprint(prefix: str) -> str:
    path = index_file_path(prefix)
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _idx_hashes:
        _idx_hashes[key] = hash_file_contents(path)
    return _idx_hashes[key]


def check_vocab_fits(indexed_dataset: IndexedDataset, vocab_size: Optional[int]) -> None:
    """A dataset whose dtype cannot hold the tokenizer's ids was made with a different tokenizer."""
    largest = max_token_id_of_dtype(indexed_dataset.dtype)
    if largest is None:
        raise ValueError(
            f"{indexed_dataset.prefix}: token dtype {indexed_dataset.dtype} is a float type, which cannot hold "
            "token ids; re-run tools/preprocess_data.py"
        )
    if vocab_size is not None and vocab_size - 1 > largest:
        raise ValueError(
            f"{indexed_dataset.prefix}: tokens are stored as {indexed_dataset.dtype} (max id {largest}) but the "
            f"tokenizer has {vocab_size} ids: the data was preprocessed with a smaller vocabulary; re-run "
            "tools/preprocess_data.py with this tokenizer or train with the one used for the data"
        )


class GPTDataset(torch.utils.data.Dataset):
    """`num_samples` samples (at least) over documents [first, last) of `indexed_dataset`.

    `len(self)` is the number of samples in the whole epochs built, which may exceed `num_samples`.
    Indices are cached in `config.cache_dir`; `self.indices_were_built` says whether this call built them.
    """

    def __init__(
        self,
        name: str,
        indexed_dataset: IndexedDataset,
        document_range: tuple[int, int],
        num_samples: Optional[int],
        config: GPTDatasetConfig,
        barrier: Optional[Callable[[], None]] = None,
        rank: int = 0,
    ):
        self.name = name
        self.indexed_dataset = indexed_dataset
        self.config = config
        first, last = document_range
        if not 0 <= first < last <= len(indexed_dataset):
            raise ValueError(
                f"{name}: document range [{first}, {last}) is empty or outside the {len(indexed_dataset)} "
                f"documents of {indexed_dataset.prefix}"
            )
        check_vocab_fits(indexed_dataset, config.vocab_size)
        documents = np.arange(first, last, dtype=np.int32)
        tokens_per_epoch = int(np.asarray(indexed_dataset.sizes[first:last], dtype=np.int64).sum())
        if tokens_per_epoch < 2:
            raise ValueError(f"{name}: documents [{first}, {last}) of {indexed_dataset.prefix} hold "
                             f"{tokens_per_epoch} tokens; a sample needs at least 2")
        if num_samples is None:  # one epoch
            num_samples = max(1, (tokens_per_epoch - 1) // config.seq_length)
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"{name}: num_samples must be a positive integer, got {num_samples!r}")
        self.num_samples = int(num_samples)

        description = {
            "kind": "gpt_dataset",
            "data_prefix": os.path.abspath(indexed_dataset.prefix),
            "index_file_sha256": _index_fingerprint(indexed_dataset.prefix),
            "document_range": [first, last],
            "num_samples": self.num_samples,
            "seq_length": config.seq_length,
            "seed": config.seed,
        }
        cache_dir = config.cache_dir or default_cache_dir(indexed_dataset.prefix)
        base = os.path.basename(indexed_dataset.prefix)
        self._cache = CachedArrays(cache_dir, f"{base}-{name}", description,
                                   ("document_index", "sample_index", "shuffle_index"))
        arrays = self._cache.load_or_build(
            lambda: build_gpt_indices(
                indexed_dataset.sizes, documents, config.seq_length, self.num_samples, config.seed
            ),
            barrier, rank,
        )
        self.document_index = arrays["document_index"]
        self.sample_index = arrays["sample_index"]
        self.shuffle_index = arrays["shuffle_index"]
        self.indices_were_built = self._cache.built

    def __len__(self) -> int:
        return len(self.shuffle_index)

    def sample_tokens(self, index: int) -> np.ndarray:
        """The seq_length + 1 tokens of sample `index` (after shuffling), int64, crossing documents as needed."""
        sample = int(self.shuffle_index[index])
        first_doc, first_offset = (int(v) for v in self.sample_index[sample])
        last_doc, last_offset = (int(v) for v in self.sample_index[sample + 1])
        read = self.indexed_dataset.get
        if first_doc == last_doc:
            pieces = [read(int(self.document_index[first_doc]), first_offset, last_offset - first_offset + 1)]
        else:
            pieces = [read(int(self.document_index[first_doc]), first_offset)]
            pieces += [read(int(self.document_index[d])) for d in range(first_doc + 1, last_doc)]
            pieces.append(read(int(self.document_index[last_doc]), 0, last_offset + 1))
        tokens = np.concatenate(pieces).astype(np.int64)
        assert len(tokens) == self.config.seq_length + 1, (len(tokens), self.config.seq_length)
        return tokens

    def __getitem__(self, index: int) -> dict:
        tokens = self.sample_tokens(index)
        vocab_size = self.config.vocab_size
        if vocab_size is not None and (tokens.max() >= vocab_size or tokens.min() < 0):
            bad = int(tokens[(tokens >= vocab_size) | (tokens < 0)][0])
            raise ValueError(
                f"{self.indexed_dataset.prefix}: sample {index} holds token id {bad}, outside the tokenizer's "
                f"vocabulary [0, {vocab_size}): the data was preprocessed with another tokenizer; re-run "
                "tools/preprocess_data.py with this one"
            )
        c = self.config
        return make_sample(
            torch.from_numpy(tokens), c.eod, eod_mask_loss=c.eod_mask_loss,
            reset_position_ids=c.reset_position_ids, reset_attention_mask=c.reset_attention_mask,
        )
