import glob
import os
import time

# Every test runs on the CPU accelerator; set before anything imports deepspeed.
os.environ.setdefault("DS_ACCELERATOR", "cpu")

_SHM_PATTERN = "/dev/shm/deepspeed_*"
_SESSION = {}


def pytest_sessionstart(session):
    _SESSION["start"] = time.time()
    _SESSION["shm_before"] = set(glob.glob(_SHM_PATTERN))


def pytest_sessionfinish(session, exitstatus):
    from tests.distributed import close_all_pools

    close_all_pools()


def pytest_terminal_summary(terminalreporter):
    """/dev/shm measured around the session: DeepSpeed files that appeared while it ran and are still there
    (ranks unlink their shm buffers at start, see megatron/core/comm.py; on a shared machine other people's
    runs can add files too, so this reports rather than fails)."""
    if "start" not in _SESSION:
        return
    new = sorted(path for path in set(glob.glob(_SHM_PATTERN)) - _SESSION["shm_before"]
                 if os.path.exists(path) and os.stat(path).st_uid == os.getuid())
    size = sum(os.path.getsize(path) for path in new if os.path.exists(path))
    terminalreporter.write_line(f"/dev/shm: {len(new)} new deepspeed_* files ({size / 2 ** 20:.1f} MiB) after the "
                                f"session" + (f": {', '.join(os.path.basename(p) for p in new[:5])}" if new else ""))
