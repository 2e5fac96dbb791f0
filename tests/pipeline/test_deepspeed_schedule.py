"""--pipeline-schedule deepspeed: GPTModel as a PipelineModule in DeepSpeed's PipelineEngine, against the
single-rank run (fp32, 5 steps, active clipping: losses and global grad norms within 1e-4 relative; bf16
losses within 2e-2)."""

import pytest

from tests.distributed import run_on_ranks
from tests.pipeline.parity import (
    BF16_ATOL,
    RTOL,
    assert_losses_match,
    assert_matches_serial,
    same_on_all_ranks,
    serial_losses,
    serial_losses_without_documents,
)
from tests.pipeline.runs import deepspeed_schedule_losses

MICRO_BATCHES = 4


def _run(world_size, **kwargs):
    return same_on_all_ranks(run_on_ranks(world_size, deepspeed_schedule_losses, **kwargs), str(kwargs))


@pytest.mark.parametrize("family, zero_stage", [("gpt", 0), ("gpt", 1), ("llama", 0), ("llama", 1)])
def test_pp2_matches_single_rank(family, zero_stage):
    run = _run(2, family=family, zero_stage=zero_stage, micro_batches=MICRO_BATCHES)
    assert_matches_serial(run, family, MICRO_BATCHES, f"{family} PP=2 ZeRO-{zero_stage}")


def test_pp2_activation_checkpointing_and_uniform_partition():
    run = _run(2, family="gpt", zero_stage=1, micro_batches=MICRO_BATCHES, activation_checkpoint_interval=1,
               partition_method="uniform")
    assert_matches_serial(run, "gpt", MICRO_BATCHES, "PP=2 recompute, uniform partition")


@pytest.mark.parametrize("grad_accum_dtype", [None, "fp32"])
def test_pp2_bf16_zero1_stays_close_to_fp32(grad_accum_dtype):
    """bf16 + ZeRO-1 in both of DeepSpeed's optimizers: bf16 accumulation (ZeRO-1 optimizer) and fp32
    accumulation (DeepSpeed's BF16_Optimizer, which the pipeline engine drives through its own paths)."""
    extra = None if grad_accum_dtype is None else {"data_types": {"grad_accum_dtype": grad_accum_dtype}}
    run = _run(2, family="gpt", zero_stage=1, micro_batches=MICRO_BATCHES, bf16=True, extra=extra)
    assert_losses_match(run["losses"], serial_losses("gpt", MICRO_BATCHES), "bf16 PP=2 ZeRO-1", rtol=0.0,
                        atol=BF16_ATOL)


@pytest.mark.parametrize("family, layout, zero_stage", [("gpt", "tp2", 1), ("llama", "tp2", 0),
                                                       ("gpt", "dp2", 0), ("llama", "dp2", 1)])
def test_pp2_with_tp2_or_dp2_matches_single_rank(family, layout, zero_stage):
    tensor_parallel = 2 if layout == "tp2" else 1
    run = _run(4, family=family, zero_stage=zero_stage, micro_batches=MICRO_BATCHES, tensor_parallel=tensor_parallel)
    data_parallel = 4 // (2 * tensor_parallel)
    assert_matches_serial(run, family, MICRO_BATCHES * data_parallel, f"{family} PP=2 x {layout} ZeRO-{zero_stage}")


def test_pp4_matches_single_rank():
    """Four stages: two middle stages that hold neither the embedding nor the head."""
    run = _run(4, family="gpt", zero_stage=1, micro_batches=MICRO_BATCHES, pipeline_parallel=4)
    assert_matches_serial(run, "gpt", MICRO_BATCHES, "gpt PP=4 ZeRO-1")


def test_parity_data_depends_on_masks_and_positions():
    """Negative control: the GPT batches pack documents, so a pipeline that dropped their attention masks and
    reset position ids (as Megatron-DeepSpeed's pipeline did) would miss the single-rank losses by more than
    ten times the tolerance of the tests above (measured: 2e-3 relative on random tokens)."""
    with_documents = serial_losses("gpt", MICRO_BATCHES)
    without = serial_losses_without_documents("gpt", MICRO_BATCHES)
    worst = max(abs(a - b) / abs(b) for a, b in zip(without, with_documents))
    assert worst > 10 * RTOL, f"masks change the losses by only {worst:.1e}"
