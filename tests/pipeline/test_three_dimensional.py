"""TP=2 x PP=2 x DP=2 on 8 ranks, both pipeline forms, against the single-rank run (fp32, losses and global
grad norms within 1e-4 relative).

Marked slow (8 processes on this CI's 2 cores) but run by the default suite."""

import pytest

from tests.distributed import run_on_ranks
from tests.pipeline.parity import assert_matches_serial, same_on_all_ranks
from tests.pipeline.runs import deepspeed_schedule_losses, megatron_schedule_losses

MICRO_BATCHES = 2


@pytest.mark.slow
def test_deepspeed_schedule_tp2_pp2_dp2_zero1():
    run = same_on_all_ranks(run_on_ranks(8, deepspeed_schedule_losses, family="gpt", zero_stage=1,
                                         micro_batches=MICRO_BATCHES, tensor_parallel=2), "deepspeed 3D")
    assert_matches_serial(run, "gpt", 2 * MICRO_BATCHES, "gpt TP=2 x PP=2 x DP=2 deepspeed ZeRO-1")


@pytest.mark.slow
@pytest.mark.parametrize("family, num_chunks, zero_stage", [("gpt", 1, 3), ("llama", 2, 2)])
def test_megatron_schedules_tp2_pp2_dp2(family, num_chunks, zero_stage):
    run = same_on_all_ranks(run_on_ranks(8, megatron_schedule_losses, family=family, zero_stage=zero_stage,
                                         micro_batches=MICRO_BATCHES, tensor_parallel=2, num_chunks=num_chunks),
                            "Megatron schedule 3D")
    assert_matches_serial(run, family, 2 * MICRO_BATCHES,
                          f"{family} TP=2 x PP=2 x DP=2, {num_chunks} chunk(s), ZeRO-{zero_stage}")
