"""--pipeline-schedule 1f1b / interleaved: this rank's model chunks in an ordinary DeepSpeed engine (any ZeRO
stage) driven by Megatron's schedules, against the single-rank run (fp32, 5 steps, active clipping: losses
and global grad norms within 1e-4 relative; bf16 losses within 2e-2).

The GPT cases exercise the tied embedding (the head's gradient enters the first stage's last backward) and
per-batch masks/positions; ZeRO-3 cases exercise cool-down backwards without forwards in between and, with
interleaving, a chunk's first backward after another chunk's (both need DeepSpeed's micro-step handled).
"""

import pytest

from tests.distributed import run_on_ranks
from tests.pipeline.parity import (
    BF16_ATOL,
    RTOL,
    assert_losses_match,
    assert_matches_serial,
    same_on_all_ranks,
    serial_losses,
)
from tests.pipeline.runs import checkpoint_file_names, megatron_schedule_losses, serial_eval_after_training

MICRO_BATCHES = 4
OFFLOAD_WITH_TORCH_ADAMW = {"zero_force_ds_cpu_optimizer": False}  # the twin's optimizer, on offloaded states


def _run(world_size, **kwargs):
    return same_on_all_ranks(run_on_ranks(world_size, megatron_schedule_losses, **kwargs), str(kwargs))


@pytest.mark.parametrize("family, zero_stage", [("gpt", 2), ("llama", 2), ("gpt", 0), ("llama", 3)])
def test_1f1b_pp2_matches_single_rank(family, zero_stage):
    run = _run(2, family=family, zero_stage=zero_stage, micro_batches=MICRO_BATCHES)
    assert_matches_serial(run, family, MICRO_BATCHES, f"{family} 1F1B PP=2 ZeRO-{zero_stage}")


@pytest.mark.parametrize("family, zero_stage", [("gpt", 0), ("gpt", 3), ("llama", 1), ("llama", 2)])
def test_interleaved_two_virtual_stages_matches_single_rank(family, zero_stage):
    """PP=2 with 2 chunks of 1 layer per rank: virtual stages 0..3 on ranks 0, 1, 0, 1. At PP=2 the
    previous and next rank are the same peer, the case where untagged batched p2p swaps messages."""
    run = _run(2, family=family, zero_stage=zero_stage, micro_batches=MICRO_BATCHES, num_chunks=2)
    assert_matches_serial(run, family, MICRO_BATCHES, f"{family} interleaved PP=2 x 2 chunks ZeRO-{zero_stage}")


def test_1f1b_bf16_zero1_stays_close_to_fp32():
    run = _run(2, family="gpt", zero_stage=1, micro_batches=MICRO_BATCHES, bf16=True)
    assert_losses_match(run["losses"], serial_losses("gpt", MICRO_BATCHES), "bf16 1F1B PP=2 ZeRO-1", rtol=0.0,
                        atol=BF16_ATOL)


def test_1f1b_cpu_offload_zero2_and_fewer_micro_batches_than_stages_allowed():
    """1F1B (unlike interleaving) runs with one micro-batch; ZeRO-2 keeps its optimizer on the CPU."""
    run = _run(2, family="gpt", zero_stage=2, micro_batches=1, zero_options={"offload_optimizer": {"device": "cpu"}},
               extra=OFFLOAD_WITH_TORCH_ADAMW)
    assert_matches_serial(run, "gpt", 1, "gpt 1F1B PP=2 ZeRO-2 offload, 1 micro-batch")


def test_1f1b_zero3_with_parameters_and_optimizer_offloaded_matches_single_rank():
    run = _run(2, family="gpt", zero_stage=3, micro_batches=MICRO_BATCHES,
               zero_options={"offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}},
               extra=OFFLOAD_WITH_TORCH_ADAMW)
    assert_matches_serial(run, "gpt", MICRO_BATCHES, "gpt 1F1B PP=2 ZeRO-3, CPU offload")


def test_forward_only_evaluation_matches_single_rank():
    run = _run(2, family="gpt", zero_stage=1, micro_batches=MICRO_BATCHES, num_chunks=2, evaluate=True)
    (expected,) = set(run_on_ranks(1, serial_eval_after_training, family="gpt", micro_batches=MICRO_BATCHES))
    assert abs(run["eval"] - expected) <= RTOL * abs(expected), f"eval loss {run['eval']!r} vs {expected!r}"


def test_1f1b_pp2_dp2_zero3_matches_single_rank():
    run = _run(4, family="gpt", zero_stage=3, micro_batches=MICRO_BATCHES)
    assert_matches_serial(run, "gpt", 2 * MICRO_BATCHES, "gpt 1F1B PP=2 x DP=2 ZeRO-3")


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_1f1b_pp2_tp2_sequence_parallel_matches_single_rank(family):
    """Sequence parallelism changes what travels between stages to [s/tp, b, h]."""
    run = _run(4, family=family, zero_stage=2, micro_batches=MICRO_BATCHES, tensor_parallel=2,
               sequence_parallel=True)
    assert_matches_serial(run, family, MICRO_BATCHES, f"{family} 1F1B PP=2 x TP=2 (SP) ZeRO-2")


def test_interleaved_pp2_dp2_zero1_matches_single_rank():
    run = _run(4, family="llama", zero_stage=1, micro_batches=MICRO_BATCHES, num_chunks=2)
    assert_matches_serial(run, "llama", 2 * MICRO_BATCHES, "llama interleaved PP=2 x DP=2 ZeRO-1")


def test_pp4_1f1b_and_interleaved_match_single_rank():
    """Four stages (middle stages hold neither embedding nor head); 8 layers for 2 chunks of 1 per rank."""
    plain = _run(4, family="gpt", zero_stage=1, micro_batches=MICRO_BATCHES, pipeline_parallel=4)
    assert_matches_serial(plain, "gpt", MICRO_BATCHES, "gpt 1F1B PP=4")
    interleaved = _run(4, family="gpt", zero_stage=0, micro_batches=MICRO_BATCHES, pipeline_parallel=4,
                       num_chunks=2, num_layers=8)
    assert_matches_serial(interleaved, "gpt", MICRO_BATCHES, "gpt interleaved PP=4", num_layers=8)


def test_checkpoint_files_are_named_per_stage(tmp_path):
    """DeepSpeed names files mp_rank_XX from the mpu; StageMPU's engines get pp_rank * TP + tp_rank there
    (as DeepSpeed's PipelineEngine), so the stages' files never overwrite each other."""
    (names,) = {tuple(names) for names in run_on_ranks(4, checkpoint_file_names, save_dir=str(tmp_path),
                                                         zero_stage=1, tensor_parallel=2)}
    assert [name for name in names if name.endswith("_model_states.pt")] == \
        [f"mp_rank_{rank:02d}_model_states.pt" for rank in range(4)]
    assert len([name for name in names if name.endswith("_optim_states.pt")]) == 4
