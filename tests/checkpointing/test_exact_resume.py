"""Interrupted and resumed fp32 training has exactly the losses of the uninterrupted run (TP=2 x DP=2).

Dropout draws from both random streams and the learning rate is still warming up at the save, so the resume
must restore weights, Adam moments and step, the scheduler position, the data position and every RNG state
of every rank; any one missing changes a loss. Equality is bit-for-bit (==), not a tolerance; it holds for
bf16 mixed precision too (the fp32 masters are restored).
"""

import os

import pytest

from tests.distributed import distributed_test

SAVE_AT = 3


def _interrupt_and_resume(zero, save_dir, bf16=False):
    from megatron.checkpointing import Checkpointer, load_checkpoint
    from megatron.core import parallel_state as ps
    from megatron.training.loop import TrainState
    from tests.checkpointing.tiny_runs import (TOTAL_STEPS, build_tiny_engine, run_steps, scramble_rng,
                                               uninterrupted_losses)

    expected = uninterrupted_losses(tp=2, zero=zero, bf16=bf16)

    engine = build_tiny_engine(tp=2, zero=zero, bf16=bf16)
    checkpointer = Checkpointer(engine, save_dir, save_interval=SAVE_AT)
    first = run_steps(engine, TrainState(), TOTAL_STEPS - 1, on_iteration_end=checkpointer)
    assert first.losses == expected[:TOTAL_STEPS - 1]
    engine.destroy()
    ps.destroy_model_parallel()

    engine = build_tiny_engine(tp=2, zero=zero, seed=777, bf16=bf16)  # other weights: only loading can match
    scramble_rng()
    resumed = load_checkpoint(engine, save_dir, log=lambda _: None)
    assert resumed.iteration == SAVE_AT and resumed.consumed_train_samples == SAVE_AT * 8
    assert resumed.rng_available
    state = TrainState(iteration=resumed.iteration, consumed_train_samples=resumed.consumed_train_samples)
    state = run_steps(engine, state, TOTAL_STEPS)
    assert state.losses == expected[SAVE_AT:], (state.losses, expected[SAVE_AT:])
    engine.destroy()


@pytest.mark.parametrize("zero,bf16", [(1, False), (3, False), (1, True)], ids=["zero1", "zero3", "zero1-bf16"])
def test_tp2_dp2_resume_is_bit_identical(zero, bf16, tmp_path):
    distributed_test(world_size=4)(_interrupt_and_resume)(zero=zero, save_dir=str(tmp_path), bf16=bf16)
    folders = sorted(name for name in os.listdir(tmp_path) if os.path.isdir(tmp_path / name))
    assert folders == ["global_step3"] and (tmp_path / "latest").read_text() == "global_step3"
