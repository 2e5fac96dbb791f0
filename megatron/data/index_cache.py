"""On-disk cache for index arrays, keyed by a hash of everything that determines them.

Files for one entry, in `cache_dir`: `{name}-{key}-{array}.npy` for each array and `{name}-{key}.json`, the
description the key was hashed from. The description is written last and marks the entry complete, and every
file is written to a temporary name and renamed into place, so no reader ever sees half an entry.

Concurrency (see file_lock.run_once_across_ranks): rank 0 builds under an exclusive file lock while the
other ranks wait at the `barrier`, then everyone loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Callable, Optional

import numpy as np

from megatron.data.file_lock import run_once_across_ranks

# Bump when the way indices are built changes, so stale caches are not reused.
INDEX_FORMAT_VERSION = 1


def hash_file_contents(path: str, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def description_key(description: dict) -> str:
    canonical = json.dumps({"index_format_version": INDEX_FORMAT_VERSION, **description}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def _write_atomically(path: str, write: Callable) -> None:
    temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class CachedArrays:
    """One cache entry: `load_or_build` returns the arrays, building and saving them only when absent."""

    def __init__(self, cache_dir: str, name: str, description: dict, array_names: tuple):
        self.cache_dir = cache_dir
        self.description = description
        self.array_names = array_names
        self.stem = os.path.join(cache_dir, f"{name}-{description_key(description)}")
        self.built = False  # whether this process built the arrays (False: loaded from the cache)

    def array_path(self, array_name: str) -> str:
        return f"{self.stem}-{array_name}.npy"

    @property
    def description_path(self) -> str:
        return f"{self.stem}.json"

    def is_complete(self) -> bool:
        files = [self.description_path] + [self.array_path(name) for name in self.array_names]
        return all(os.path.isfile(path) for path in files)

    def _build_and_save(self, build: Callable[[], dict]) -> None:
        arrays = build()
        assert set(arrays) == set(self.array_names), (sorted(arrays), self.array_names)
        for array_name, array in arrays.items():
            _write_atomically(self.array_path(array_name), lambda f, a=array: np.save(f, a, allow_pickle=False))
        text = json.dumps(self.description, indent=1, sort_keys=True).encode()
        _write_atomically(self.description_path, lambda f: f.write(text))  # last: marks the entry complete

    def load_or_build(
        self, build: Callable[[], dict], barrier: Optional[Callable[[], None]] = None, rank: int = 0
    ) -> dict:
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
        except OSError as error:
            raise OSError(
                f"cannot create the index cache directory {self.cache_dir!r} ({error}); pass a writable "
                "cache_dir (--data-cache-path)"
            ) from None
        self.built = run_once_across_ranks(
            self.stem + ".lock", self.is_complete, lambda: self._build_and_save(build), barrier, rank
        )
        # Memory-mapped: ranks on one machine share the pages, and huge indices load instantly.
        return {n: np.load(self.array_path(n), mmap_mode="r", allow_pickle=False) for n in self.array_names}
