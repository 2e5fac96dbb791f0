"""An exclusive lock between processes on one machine (or a file system with working POSIX locks)."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Callable, Iterator, Optional


@contextmanager
def exclusive_file_lock(lock_path: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_path` (created if needed) for the duration of the block.

    The kernel releases the lock if the holder dies, so a crashed builder never blocks the others forever.
    """
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def run_once_across_ranks(
    lock_path: str,
    is_done: Callable[[], bool],
    build: Callable[[], None],
    barrier: Optional[Callable[[], None]] = None,
    rank: int = 0,
) -> bool:
    """Make `is_done()` true by calling `build()` at most once per file system; returns whether this call built.

    Rank 0 (or, without a barrier, whichever process takes the lock first) builds under the lock; with a
    barrier the other ranks wait there. A rank that finds nothing after the barrier is on a node that does not
    share the file system, and builds its own copy, again under the lock. `build` must publish its result
    atomically (write temporaries, then os.replace) so that `is_done` never sees half of it.
    """
    built = False

    def build_unless_done() -> None:
        nonlocal built
        with exclusive_file_lock(lock_path):
            if not is_done():
                build()
                built = True

    # Every rank must reach the barrier exactly once, whatever it finds, or the ranks' barriers pair up wrongly.
    if (rank == 0 or barrier is None) and not is_done():
        build_unless_done()
    if barrier is not None:
        barrier()
        if not is_done():
            build_unless_done()
    return built
