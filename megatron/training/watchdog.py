"""A per-rank watchdog thread: heartbeats through the rendezvous store, and the launcher's death.

Heartbeats. Every ``interval_s`` each rank writes ``<count> <iteration> <host> <pid>`` under its own key in
the TCP store the world rendezvoused through (a client connection of its own with a short timeout, so it
needs no collective and no gloo). The thread keeps beating while the main thread waits inside a collective
(gloo releases the GIL), so a rank whose heartbeat stops is stopped (SIGSTOP, a debugger), frozen or dead;
a rank that beats but whose iteration lags is stuck in its own work (data loading, a deadlock of its own)
while the others wait for it. When a peer goes quiet rank 0 logs it once (rank 1 when rank 0 is the quiet
one), and when a collective times out (--distributed-timeout-minutes) :meth:`Watchdog.describe_stragglers`
names the ranks for the job's error message.

Launcher death. A rank started by a launcher polls its parent: when the parent is gone (the rank was
re-parented), or, under the ``deepspeed`` launcher, when the runner above its per-node ``launch.py`` is gone,
the rank sends itself SIGTERM, which saves and stops the run like any exit signal (exit code 75) instead of
leaving it training unsupervised. Polling works on every POSIX system; prctl(PR_SET_PDEATHSIG) would only
see the direct parent.
"""

import datetime
import os
import signal
import socket
import threading
import time
from typing import Dict, List, Optional, Tuple

KEY_PREFIX = "megatron_ds/heartbeat/"


def _parent_of(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def launcher_chain() -> List[Tuple[int, int]]:
    """(pid, its parent) pairs to watch: our parent, and the runner above DeepSpeed's per-node launch.py."""
    parent = os.getppid()
    chain = [(os.getpid(), parent)]
    if "deepspeed.launcher.launch" in _cmdline(parent):
        grandparent = _parent_of(parent)
        if grandparent and grandparent > 1:
            chain.append((parent, grandparent))
    return chain


class Watchdog:
    def __init__(self, rank: int, world_size: int, *, interval_s: float = 2.0, watch_launcher: bool = True,
                 log=print):
        self.rank, self.world_size, self.interval_s, self.log = rank, world_size, interval_s, log
        self.iteration = 0  # updated by the training loop
        self._count = 0
        self._seen: Dict[int, Tuple[str, float]] = {}  # rank -> (last value, monotonic time it changed)
        self._reported = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the store connection is shared by the thread and the main thread
        self._store = self._connect()
        self._chain = launcher_chain() if watch_launcher and _launched() else []
        self._launcher_gone = False
        self._thread = threading.Thread(target=self._run, name="megatron-ds-watchdog", daemon=True)

    @staticmethod
    def _connect():
        from torch.distributed import TCPStore

        address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not address or not port:
            return None
        try:
            return TCPStore(address, int(port), is_master=False, timeout=datetime.timedelta(seconds=10),
                            wait_for_workers=False)
        except Exception:  # noqa: BLE001 - a watchdog without a store still watches the launcher
            return None

    def start(self) -> "Watchdog":
        self._beat()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()

    # --- the thread ----------------------------------------------------------------------------------
    def _run(self):
        while not self._stop.wait(self.interval_s):
            try:
                self._beat()
                self._watch_peers()
            except Exception:  # noqa: BLE001 - the store host may be stopped; keep watching the launcher
                pass
            self._watch_launcher()

    def _beat(self):
        if self._store is None:
            return
        self._count += 1
        with self._lock:
            self._store.set(f"{KEY_PREFIX}{self.rank}",
                        f"{self._count} {self.iteration} {socket.gethostname()} {os.getpid()}")

    def _read_peers(self) -> Dict[int, str]:
        keys = [f"{KEY_PREFIX}{rank}" for rank in range(self.world_size)]
        with self._lock:
            if not self._store.check(keys):
                return {}
            values = self._store.multi_get(keys)
        return {rank: value.decode() for rank, value in enumerate(values)}

    def _watch_peers(self):
        if self._store is None:
            return
        now = time.monotonic()
        for rank, value in self._read_peers().items():
            last = self._seen.get(rank)
            if last is None or last[0].split()[0] != value.split()[0]:
                self._seen[rank] = (value, now)
                self._reported.discard(rank)
        reporter = 1 if self.rank == 1 and 0 in self.quiet_ranks() else 0
        for rank in self.quiet_ranks():
            if self.rank == reporter and rank not in self._reported:
                self._reported.add(rank)
                self.log(f"> watchdog: {self._describe(rank)} has sent no heartbeat for "
                         f"{now - self._seen[rank][1]:.0f} s (stopped, frozen or dead)")

    def _watch_launcher(self):
        if self._launcher_gone:
            return
        for pid, parent in self._chain:
            current = os.getppid() if pid == os.getpid() else _parent_of(pid)
            if current != parent:
                self._launcher_gone = True
                self.log(f"> watchdog (rank {self.rank}): the launcher (pid {parent}) is gone: saving and stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    # --- reports -------------------------------------------------------------------------------------
    def quiet_ranks(self) -> List[int]:
        """Ranks whose heartbeat has not changed for 3 intervals (or never arrived) as seen by this rank."""
        now, limit = time.monotonic(), 3 * self.interval_s
        return [rank for rank in range(self.world_size) if rank != self.rank and rank in self._seen
                and now - self._seen[rank][1] > limit]

    def _describe(self, rank: int) -> str:
        value = self._seen.get(rank, ("? ? ? ?", 0.0))[0].split()
        host, pid = (value[2], value[3]) if len(value) >= 4 else ("?", "?")
        return f"rank {rank} (host {host}, pid {pid}, at iteration {value[1] if len(value) > 1 else '?'})"

    def describe_stragglers(self) -> str:
        """Which ranks stopped progressing, for the error of a failed or timed-out collective. Waits up to
        3.5 heartbeat intervals for a quiet rank to show (a peer that just died is not quiet yet)."""
        deadline = time.monotonic() + 3.5 * self.interval_s
        while not self.quiet_ranks() and time.monotonic() < deadline:
            time.sleep(self.interval_s / 2)
        try:
            self._watch_peers()
        except Exception:  # noqa: BLE001
            if self.rank != 0:
                return "rank 0 (the rendezvous store's host) does not answer: it is stopped, frozen or dead"
        quiet = self.quiet_ranks()
        if quiet:
            return "; ".join(self._describe(rank) for rank in quiet) + " stopped sending heartbeats"
        iterations = {rank: int(value.split()[1]) for rank, (value, _) in self._seen.items()}
        if iterations and len(set(iterations.values())) > 1:
            behind = min(iterations.values())
            return "; ".join(self._describe(rank) for rank, it in sorted(iterations.items()) if it == behind) \
                + " is behind the others (alive, but stuck in its own work)"
        return "every rank still sends heartbeats; the collective itself did not complete"


def _launched() -> bool:
    """True under a launcher (deepspeed, torchrun, mpirun), whose death should end the rank."""
    return any(key in os.environ for key in ("LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"))
