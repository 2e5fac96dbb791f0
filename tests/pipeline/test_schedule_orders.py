"""The schedules' operation orders, checked without processes: complete, dependency-ordered, deadlock-free,
with the bubble of the analytic formulas."""

import pytest

from megatron.pipeline.schedules import (
    BACKWARD,
    FORWARD,
    analytic_bubble_fraction,
    one_f_one_b,
    schedule_for,
    simulate,
)

LAYOUTS = [(p, v, m) for p in (2, 3, 4) for v in (1, 2, 3) for m in (p, 2 * p, 3 * p)] + [(2, 1, 1), (4, 1, 3)]


@pytest.mark.parametrize("pipeline_size, num_chunks, num_micro_batches", LAYOUTS)
def test_every_rank_runs_each_pass_once_forward_first(pipeline_size, num_chunks, num_micro_batches):
    for rank in range(pipeline_size):
        ops = schedule_for(num_micro_batches, pipeline_size, rank, num_chunks)
        expected = {(chunk, mb) for chunk in range(num_chunks) for mb in range(num_micro_batches)}
        forwards = [(op.chunk, op.micro_batch) for op in ops if op.kind == FORWARD]
        backwards = [(op.chunk, op.micro_batch) for op in ops if op.kind == BACKWARD]
        assert sorted(forwards) == sorted(expected) and sorted(backwards) == sorted(expected)
        position = {(op.kind, op.chunk, op.micro_batch): i for i, op in enumerate(ops)}
        assert all(position[(FORWARD, c, mb)] < position[(BACKWARD, c, mb)] for c, mb in expected)
        # Micro-batches enter each chunk in order, so tags need no micro-batch id: FIFO matching suffices.
        for chunk in range(num_chunks):
            assert [mb for c, mb in forwards if c == chunk] == list(range(num_micro_batches))
            assert [mb for c, mb in backwards if c == chunk] == list(range(num_micro_batches))


@pytest.mark.parametrize("pipeline_size, num_chunks, num_micro_batches", LAYOUTS)
def test_schedules_complete_with_the_analytic_bubble(pipeline_size, num_chunks, num_micro_batches):
    # Per-chunk costs 1/v and 2/v: the same model cut into v times more pieces.
    step, busy = simulate(num_micro_batches, pipeline_size, num_chunks, forward_time=1 / num_chunks,
                          backward_time=2 / num_chunks)
    ideal = 3.0 * num_micro_batches
    assert all(abs(time - ideal) < 1e-9 for time in busy.values())
    assert abs((step - ideal) / step - analytic_bubble_fraction(num_micro_batches, pipeline_size, num_chunks)) < 1e-9


def test_1f1b_keeps_at_most_pipeline_depth_micro_batches_in_flight():
    for rank in range(4):
        in_flight = peak = 0
        for op in one_f_one_b(16, 4, rank):
            in_flight += 1 if op.kind == FORWARD else -1
            peak = max(peak, in_flight)
        assert peak == 4 - rank


def test_interleaving_shrinks_the_bubble():
    assert analytic_bubble_fraction(8, 4, 2) < analytic_bubble_fraction(8, 4, 1)
    assert analytic_bubble_fraction(8, 4, 1) == pytest.approx(3 / 11)
