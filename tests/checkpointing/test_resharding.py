"""Resuming into another layout continues the uninterrupted run within 1e-4 relative, optimizer state included.

One run per source layout trains TOTAL_STEPS steps and saves at SAVE_AT; its own later losses are the
uninterrupted reference. Each test loads that checkpoint with ``universal=True`` (what --universal-checkpoint
asks) into another TP / DP / ZeRO layout and trains to TOTAL_STEPS. Dropout is off: the random streams of
another layout cannot be the same ones. Covered: TP 2->1 (DeepSpeed's universal loader), DP 1->2, ZeRO 1->3
(our loader), and ZeRO-3 into another TP, where DeepSpeed's own loader fails.
"""

import os

import pytest

from tests.distributed import run_on_ranks

SAVE_AT = 3
RTOL = 1e-4


def _train_and_save(tp, zero, save_dir):
    from megatron.checkpointing import Checkpointer
    from megatron.training.loop import TrainState
    from tests.checkpointing.tiny_runs import TOTAL_STEPS, build_tiny_engine, run_steps

    engine = build_tiny_engine(tp=tp, zero=zero, dropout=0.0)
    checkpointer = Checkpointer(engine, save_dir, log=lambda _: None)

    def save_once(state):
        if state.iteration == SAVE_AT:
            checkpointer.save(state)
        return False

    state = run_steps(engine, TrainState(), TOTAL_STEPS, on_iteration_end=save_once)
    engine.destroy()
    return state.losses


def _resume_resharded(tp, zero, load_dir):
    from megatron.checkpointing import load_checkpoint
    from megatron.training.loop import TrainState
    from tests.checkpointing.tiny_runs import TOTAL_STEPS, build_tiny_engine, run_steps

    engine = build_tiny_engine(tp=tp, zero=zero, dropout=0.0, seed=777)
    resumed = load_checkpoint(engine, load_dir, universal=True, log=lambda _: None)
    assert (resumed.iteration, resumed.consumed_train_samples) == (SAVE_AT, SAVE_AT * 8)
    assert engine.lr_scheduler.num_steps == SAVE_AT
    state = run_steps(engine, TrainState(iteration=resumed.iteration,
                                         consumed_train_samples=resumed.consumed_train_samples), TOTAL_STEPS)
    engine.destroy()
    return state.losses


def _saved(tmp_path_factory, world, tp, zero):
    save_dir = str(tmp_path_factory.mktemp(f"tp{tp}_dp{world // tp}_zero{zero}"))
    losses = run_on_ranks(world, _train_and_save, tp=tp, zero=zero, save_dir=save_dir)[0]
    return save_dir, losses[SAVE_AT:]


@pytest.fixture(scope="module")
def tp2_dp2_zero1(tmp_path_factory):
    return _saved(tmp_path_factory, 4, tp=2, zero=1)


@pytest.fixture(scope="module")
def tp2_dp2_zero3(tmp_path_factory):
    return _saved(tmp_path_factory, 4, tp=2, zero=3)


@pytest.fixture(scope="module")
def tp2_dp1_zero1(tmp_path_factory):
    return _saved(tmp_path_factory, 2, tp=2, zero=1)


def _assert_continues(losses, expected, what):
    assert len(losses) == len(expected)
    for step, (got, want) in enumerate(zip(losses, expected), start=SAVE_AT + 1):
        assert abs(got - want) <= RTOL * abs(want), f"{what}: step {step} loss {got!r} vs uninterrupted {want!r}"


def test_tp2_to_tp1(tp2_dp2_zero1):
    save_dir, expected = tp2_dp2_zero1
    losses = run_on_ranks(2, _resume_resharded, tp=1, zero=1, load_dir=save_dir)[0]
    _assert_continues(losses, expected, "TP=2 DP=2 -> TP=1 DP=2 (ZeRO-1)")
    marker = os.path.join(save_dir, "global_step3.universal", "universal_conversion_done.json")
    converted_at = os.path.getmtime(marker)
    # A second resume reuses the cached conversion.
    losses = run_on_ranks(4, _resume_resharded, tp=2, zero=1, load_dir=save_dir)[0]
    _assert_continues(losses, expected, "TP=2 DP=2 -> same layout through the universal copy")
    assert os.path.getmtime(marker) == converted_at


def test_zero1_to_zero3(tp2_dp2_zero1):
    save_dir, expected = tp2_dp2_zero1
    losses = run_on_ranks(4, _resume_resharded, tp=2, zero=3, load_dir=save_dir)[0]
    _assert_continues(losses, expected, "ZeRO-1 -> ZeRO-3 (TP=2 DP=2)")


def test_dp1_to_dp2(tp2_dp1_zero1):
    save_dir, expected = tp2_dp1_zero1
    losses = run_on_ranks(4, _resume_resharded, tp=2, zero=1, load_dir=save_dir)[0]
    _assert_continues(losses, expected, "TP=2 DP=1 -> TP=2 DP=2 (ZeRO-1)")


def test_zero3_into_another_tp(tp2_dp2_zero3):
    save_dir, expected = tp2_dp2_zero3
    losses = run_on_ranks(2, _resume_resharded, tp=1, zero=3, load_dir=save_dir)[0]
    _assert_continues(losses, expected, "ZeRO-3 TP=2 DP=2 -> ZeRO-3 TP=1 DP=2")
