"""The rank pool itself: real processes, real collectives, failures and hangs reported, never hidden."""

import pytest
import torch

from tests.distributed import distributed_test, get_pool


def _all_reduce_rank():
    from megatron.core import comm

    value = torch.tensor([float(comm.get_rank() + 1)])
    comm.all_reduce(value)
    return value.item(), comm.get_rank(), comm.get_world_size()


def test_pool_runs_real_collectives():
    results = get_pool(2).run(__name__, "_all_reduce_rank", {}, timeout=60)
    assert results == [(3.0, 0, 2), (3.0, 1, 2)]


def _fail_on_rank_one():
    from megatron.core import comm

    if comm.get_rank() == 1:
        raise RuntimeError("deliberate failure on rank 1")
    return "fine"


def test_failing_rank_traceback_is_shown():
    with pytest.raises(AssertionError, match=r"rank 1 failed:(.|\n)*deliberate failure on rank 1"):
        get_pool(2).run(__name__, "_fail_on_rank_one", {}, timeout=60)


def _hang_on_rank_zero():
    from megatron.core import comm

    if comm.get_rank() == 0:
        comm.barrier()  # rank 1 never joins: a hung collective


def test_hung_collective_times_out_and_pool_recovers():
    with pytest.raises(TimeoutError, match=r"ranks \[0\] did not finish"):
        get_pool(2).run(__name__, "_hang_on_rank_zero", {}, timeout=5)
    # The broken pool is replaced by a fresh one that works.
    assert get_pool(2).run(__name__, "_all_reduce_rank", {}, timeout=60)[0][0] == 3.0


def _leave_groups_behind():
    from megatron.core import parallel_state

    assert not parallel_state.model_parallel_is_initialized(), "state leaked from a previous test"
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)


@distributed_test(world_size=2)
def test_state_is_reset_between_tests():
    _leave_groups_behind()


@distributed_test(world_size=2)
def test_state_is_reset_between_tests_again():
    _leave_groups_behind()
