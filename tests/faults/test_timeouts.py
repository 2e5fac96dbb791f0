"""--distributed-timeout-minutes reaches every process group: ours (parallel_state) and DeepSpeed's."""

import datetime

from tests.distributed import run_on_ranks


def _group_timeouts():
    import torch
    from torch.distributed import distributed_c10d

    from megatron.core import comm
    from tests.checkpointing.tiny_runs import build_tiny_engine

    engine = build_tiny_engine(tp=2, zero=1)  # TP/DP/model-parallel groups, then DeepSpeed's own
    timeouts = {}
    for group in list(distributed_c10d._world.pg_map):
        backend = group._get_backend(torch.device("cpu"))
        timeouts[distributed_c10d._world.pg_names.get(group, str(group))] = backend.options._timeout
    engine.destroy()
    return comm.group_timeout(), timeouts


def test_every_group_gets_the_distributed_timeout():
    expected, timeouts = run_on_ranks(2, _group_timeouts)[0]
    assert expected == datetime.timedelta(minutes=5)  # what the rank pool passed to comm.init_distributed
    assert len(timeouts) >= 4, timeouts
    assert all(value == expected for value in timeouts.values()), timeouts
