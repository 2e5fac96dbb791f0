"""Multi-rank tests on real gloo processes, from a persistent pool of ranks.

Spawning and initialising a fresh world for every test costs 5-25 s on this class of machine; a pool of
rank processes that joined the world once and then runs test functions sent over queues costs well under a
second per test. Usage::

    @distributed_test(world_size=2)
    def test_something(tp):            # runs on every rank of a 2-rank world
        ...assert on this rank...

Between tests every rank resets megatron's and DeepSpeed's module-level state (process groups, DeepSpeed's
mpu and group caches, activation-checkpointing configuration, RNG). A test that fails on any rank shows that
rank's traceback; a test that exceeds its timeout (a hung collective) fails, and its pool is killed and
replaced, so nothing ever hangs the suite.
"""

import atexit
import functools
import importlib
import multiprocessing
import os
import queue
import socket
import time
import traceback

_WORKER_ENV = "MEGATRON_DS_RANK_WORKER"
_DEFAULT_TIMEOUT_S = float(os.environ.get("MEGATRON_DS_TEST_TIMEOUT", "240"))
_START_TIMEOUT_S = 180.0
_GRACE_AFTER_FAILURE_S = 10.0


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reset_rank_state():
    """Undo whatever the previous test left in module globals of megatron and DeepSpeed."""
    import gc
    import random

    import numpy as np
    import torch
    from deepspeed.runtime.activation_checkpointing import checkpointing as ds_ckpt
    from deepspeed.utils import groups as ds_groups

    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import get_rng_tracker

    parallel_state.destroy_model_parallel()
    ds_groups.mpu = None
    ds_groups.mesh_device = None
    ds_groups._WORLD_GROUP = None
    ds_groups._ZERO_PARAM_INTRA_PARALLEL_GROUP = None
    for cache in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                  "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
        getattr(ds_groups, cache).clear()
    # ZeRO-3 numbers modules and parameters from process-wide counters and checks that every rank agrees on
    # the numbers; tests that built different modules on different ranks (pipeline stages) would leave the
    # counters apart.
    from deepspeed.runtime.zero.parameter_offload import DeepSpeedZeRoOffload
    from deepspeed.runtime.zero.partition_parameters import Init as ZeroInit

    DeepSpeedZeRoOffload._register_deepspeed_module.__defaults__[0][0] = 0
    ZeroInit.param_id = 0
    ds_ckpt.reset()
    ds_ckpt.mpu = None
    ds_ckpt.PARTITION_ACTIVATIONS = False
    ds_ckpt.CONTIGUOUS_CHECKPOINTING = False
    ds_ckpt.CPU_CHECKPOINT = False
    get_rng_tracker().reset()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    gc.collect()


def _worker_main(rank, world_size, port, tasks, results):
    os.environ.update({
        _WORKER_ENV: "1", "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size),
    })
    try:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel("WARNING")
        from megatron.core import comm

        # A collective left waiting by a failed peer errors out after this, even if the parent is gone.
        comm.init_distributed("gloo", timeout_minutes=5)
        results.put((rank, "ready", None))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
        return
    while True:
        task = tasks.get()
        if task is None:
            break
        module_name, qualname, kwargs = task
        try:
            _reset_rank_state()
            target = importlib.import_module(module_name)
            for part in qualname.split("."):
                target = getattr(target, part)
            results.put((rank, "ok", target(**kwargs)))
        except BaseException:
            results.put((rank, "error", traceback.format_exc()))
    import torch.distributed as dist

    dist.destroy_process_group()


class RankPool:
    """``world_size`` processes that joined one gloo world and wait for test functions to run."""

    def __init__(self, world_size):
        ctx = multiprocessing.get_context("spawn")
        self.world_size = world_size
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(world_size)]
        port = _free_port()
        self.processes = [ctx.Process(target=_worker_main, args=(rank, world_size, port, self.tasks[rank],
                                                                 self.results), daemon=True)
                          for rank in range(world_size)]
        for process in self.processes:
            process.start()
        replies = self._collect(_START_TIMEOUT_S, "starting the rank pool")
        failed = {rank: value for rank, (status, value) in replies.items() if status != "ready"}
        if failed:
            self.close()
            raise RuntimeError(_format_failures(failed, "could not start"))

    def run(self, module_name, qualname, kwargs, timeout):
        for task_queue in self.tasks:
            task_queue.put((module_name, qualname, kwargs))
        replies = self._collect(timeout, f"{qualname}")
        failed = {rank: value for rank, (status, value) in replies.items() if status == "error"}
        if failed:
            raise AssertionError(_format_failures(failed, "failed"))
        return [replies[rank][1] for rank in range(self.world_size)]

    def _collect(self, timeout, what):
        """Gather one reply per rank. On a failure or a timeout the pool is marked broken (peers of a failed
        rank may be stuck in a collective) and the caller gets everything that did arrive."""
        replies, deadline = {}, time.monotonic() + timeout
        while len(replies) < self.world_size:
            remaining = deadline - time.monotonic()
            if any(status == "error" for status, _ in replies.values()):
                remaining = min(remaining, _GRACE_AFTER_FAILURE_S)
            try:
                rank, status, value = self.results.get(timeout=max(remaining, 0.01))
                replies[rank] = (status, value)
                continue
            except queue.Empty:
                pass
            self.broken = True
            if any(status == "error" for status, _ in replies.values()):
                return replies
            dead = [rank for rank, p in enumerate(self.processes) if not p.is_alive()]
            missing = [rank for rank in range(self.world_size) if rank not in replies]
            raise TimeoutError(f"{what}: ranks {missing} did not finish within {timeout:.0f} s (a hung collective "
                               f"or a deadlock); dead processes: {dead or 'none'}")
        if any(status == "error" for status, _ in replies.values()):
            self.broken = True
        return replies

    broken = False

    def close(self):
        for process in self.processes:
            if process.is_alive():
                process.kill()
        for process in self.processes:
            process.join(timeout=5)


def _format_failures(failed, verb):
    return "\n".join(f"--- rank {rank} {verb}:\n{text}" for rank, text in sorted(failed.items()))


_POOLS = {}


def get_pool(world_size) -> RankPool:
    pool = _POOLS.get(world_size)
    if pool is None or pool.broken:
        if pool is not None:
            pool.close()
        pool = _POOLS[world_size] = RankPool(world_size)
    return pool


def close_all_pools():
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


atexit.register(close_all_pools)


def in_rank_worker() -> bool:
    return os.environ.get(_WORKER_ENV) == "1"


def distributed_test(world_size: int, timeout: float = _DEFAULT_TIMEOUT_S):
    """Run the decorated test on every rank of a ``world_size`` gloo world; returns the per-rank results."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(**kwargs):
            if in_rank_worker():
                return fn(**kwargs)
            pool = get_pool(world_size)
            pool.run(fn.__module__, fn.__qualname__, kwargs, timeout)

        return wrapper

    return decorate


def run_on_ranks(world_size, fn, timeout=_DEFAULT_TIMEOUT_S, **kwargs):
    """Run a module-level function on every rank and return the list of per-rank return values."""
    return get_pool(world_size).run(fn.__module__, fn.__qualname__, kwargs, timeout)
