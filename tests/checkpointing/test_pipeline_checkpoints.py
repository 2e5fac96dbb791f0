"""Pipeline checkpoints: exact resume of a PP=2 run, and resharding PP 1 -> 2 and 2 -> 1.

Both pipeline forms are covered: DeepSpeed's PipelineEngine (``--pipeline-schedule deepspeed``) and Megatron's
1F1B schedule over stage chunks. A PP=2 run saved at step 3 and resumed has exactly the losses of the
uninterrupted run (dropout on). A plain PP=1 checkpoint loads into either pipeline form, and a 1F1B
checkpoint into the plain model, with --universal-checkpoint; both continue within 1e-4 relative.
"""

import pytest

from tests.distributed import run_on_ranks

SAVE_AT, RTOL = 3, 1e-4
SCHEDULES = ["deepspeed", "1f1b"]


def _uninterrupted_then_interrupted(pp, schedule, dropout, save_dir):
    from megatron.checkpointing import load_checkpoint
    from megatron.core import parallel_state as ps
    from tests.checkpointing.pipeline_runs import TOTAL_STEPS, build, train

    engine, _ = build(pp, schedule, dropout=dropout)
    expected = train(engine, 0, TOTAL_STEPS, save_dir=save_dir, save_at=SAVE_AT)
    engine.destroy()
    ps.destroy_model_parallel()
    if not dropout:
        return expected
    engine, _ = build(pp, schedule, dropout=dropout, seed=99)
    resumed = load_checkpoint(engine, save_dir, log=lambda _: None)
    assert resumed.iteration == SAVE_AT and resumed.rng_available
    losses = train(engine, SAVE_AT, TOTAL_STEPS)
    assert losses == expected[SAVE_AT:], (losses, expected)
    engine.destroy()
    return expected


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_pp2_resume_is_bit_identical(schedule, tmp_path):
    run_on_ranks(2, _uninterrupted_then_interrupted, pp=2, schedule=schedule, dropout=0.1, save_dir=str(tmp_path))


def _resume_resharded(pp, schedule, load_dir):
    from megatron.checkpointing import load_checkpoint
    from tests.checkpointing.pipeline_runs import TOTAL_STEPS, build, train

    engine, _ = build(pp, schedule, seed=99)
    resumed = load_checkpoint(engine, load_dir, universal=True, log=lambda _: None)
    assert resumed.iteration == SAVE_AT
    losses = train(engine, SAVE_AT, TOTAL_STEPS)
    engine.destroy()
    return losses


def _assert_close(losses, expected, what):
    for step, (got, want) in enumerate(zip(losses, expected), start=SAVE_AT + 1):
        assert abs(got - want) <= RTOL * abs(want), f"{what}: step {step} loss {got!r} vs uninterrupted {want!r}"
    assert len(losses) == len(expected)


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory):
    save_dir = str(tmp_path_factory.mktemp("pp1"))
    losses = run_on_ranks(1, _uninterrupted_then_interrupted, pp=1, schedule=None, dropout=0.0,
                          save_dir=save_dir)[0]
    return save_dir, losses[SAVE_AT:]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_pp1_to_pp2(schedule, plain_checkpoint):
    load_dir, expected = plain_checkpoint
    losses = run_on_ranks(2, _resume_resharded, pp=2, schedule=schedule, load_dir=load_dir)[0]
    _assert_close(losses, expected, f"PP=1 -> PP=2 ({schedule})")


def test_pp2_1f1b_to_pp1(tmp_path):
    save_dir = str(tmp_path)
    expected = run_on_ranks(2, _uninterrupted_then_interrupted, pp=2, schedule="1f1b", dropout=0.0,
                            save_dir=save_dir)[0]
    losses = run_on_ranks(1, _resume_resharded, pp=1, schedule=None, load_dir=save_dir)[0]
    _assert_close(losses, expected[SAVE_AT:], "PP=2 (1F1B) -> PP=1")
