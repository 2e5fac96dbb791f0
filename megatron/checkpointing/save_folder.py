"""The --save folder, claimed before any training: writable, and locked against a second run.

Two runs saving into one folder overwrite each other's ``global_stepN`` and ``latest`` without noticing, and
a folder that cannot be written is otherwise discovered at the first save, after the work is done. Rank 0
(the only rank that publishes ``latest``) takes an exclusive ``fcntl.flock`` on ``<save>/.megatron_ds.lock``
for the life of the process and writes its host and pid into it; a second run names them. The kernel drops
the lock when the holder dies, however it dies, so a crashed run never leaves a stale lock.

flock is advisory and per host on most network file systems; two runs on different hosts sharing a folder
over NFS are only caught where the file system implements flock across clients.
"""

import errno
import fcntl
import os
import socket
from typing import Optional

from megatron.checkpointing.safe_load import CheckpointError
from megatron.core import comm

LOCK_NAME = ".megatron_ds.lock"


class SaveFolderError(CheckpointError):
    """The --save folder cannot be used: not writable, or held by another run."""


def _probe_writable(save_dir: str):
    probe = os.path.join(save_dir, f".write_probe.{socket.gethostname()}.{os.getpid()}")
    try:
        os.makedirs(save_dir, exist_ok=True)
        with open(probe, "w") as handle:
            handle.write("probe")
            handle.flush()
            os.fsync(handle.fileno())
        os.remove(probe)
    except OSError as error:
        raise SaveFolderError(f"--save {save_dir} is not writable ({error.strerror or error}): checked before "
                              f"training so no work is lost; fix its permissions or choose another folder") \
            from error


def _take_lock(save_dir: str):
    path = os.path.join(save_dir, LOCK_NAME)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            handle.close()
            raise
        handle.seek(0)
        holder = handle.read().strip() or "an unknown process"
        handle.close()
        raise SaveFolderError(f"--save {save_dir} is in use by another run ({holder}, lock {path}): two runs "
                              f"saving into one folder overwrite each other's checkpoints. Stop the other run "
                              f"or choose another --save folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
    handle.flush()
    return handle


class SaveFolder:
    """Holds the lock on rank 0 until :meth:`release` (or process exit)."""

    def __init__(self, save_dir: Optional[str]):
        self.save_dir, self._handle = save_dir, None

    def claim(self):
        """A collective: rank 0 checks and locks; every rank raises the same SaveFolderError on failure."""
        if not self.save_dir:
            return self
        problem = None
        if comm.get_rank() == 0:
            try:
                _probe_writable(self.save_dir)
                self._handle = _take_lock(self.save_dir)
            except SaveFolderError as error:
                problem = str(error)
        if comm.get_world_size() > 1:
            problem = comm.broadcast_object(problem, src=0)
        if problem:
            raise SaveFolderError(problem)
        return self

    def release(self):
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
