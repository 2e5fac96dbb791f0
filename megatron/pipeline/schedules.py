"""The order in which one pipeline rank runs its forward and backward passes (Megatron's schedules).

Pure functions of (micro-batches m, pipeline size p, rank r[, chunks v]); the executor (scheduled_pipeline.py)
turns each operation into compute and p2p. Notation: virtual stage s = chunk * p + rank runs layers
[s * n, (s + 1) * n); stage 0 holds the embedding, stage v * p - 1 the head.

1F1B (non-interleaved, v = 1): rank r runs min(p - r - 1, m) warm-up forwards, then alternates one forward
and one backward, then drains the remaining backwards. At most p - r micro-batches are in flight, instead of
GPipe's m. Bubble: (p - 1) / (m + p - 1) of the step.

Interleaved 1F1B (v > 1): each rank holds v chunks; the m * v virtual micro-batches run in groups of p
micro-batches per chunk, forwards through chunks 0 .. v-1 and backwards through v-1 .. 0, with
(p - r - 1) * 2 + (v - 1) * p warm-up forwards. Bubble: (p - 1) / (v * m + p - 1). Needs m to be a multiple
of p (each group of p micro-batches visits every chunk).
"""

from dataclasses import dataclass
from typing import Dict, List, Tuple

FORWARD, BACKWARD = "forward", "backward"


@dataclass(frozen=True)
class PipelineOp:
    kind: str          # FORWARD or BACKWARD
    chunk: int         # model chunk on this rank (0 without interleaving)
    micro_batch: int


def check_schedule_arguments(num_micro_batches: int, pipeline_size: int, num_chunks: int = 1) -> None:
    if num_micro_batches < 1:
        raise ValueError(f"a pipeline step needs at least one micro-batch, got {num_micro_batches}")
    if num_chunks < 1:
        raise ValueError(f"the number of model chunks per stage must be >= 1, got {num_chunks}")
    if num_chunks > 1 and num_micro_batches % pipeline_size:
        fewer = "fewer than" if num_micro_batches < pipeline_size else "not a multiple of"
        raise ValueError(f"the interleaved schedule needs the number of micro-batches (gradient accumulation "
                         f"steps, {num_micro_batches}) to be a multiple of the pipeline-model-parallel size "
                         f"{pipeline_size}; {num_micro_batches} is {fewer} {pipeline_size}: raise "
                         f"--global-batch-size or lower --micro-batch-size so that it is")


def one_f_one_b(num_micro_batches: int, pipeline_size: int, pipeline_rank: int) -> List[PipelineOp]:
    check_schedule_arguments(num_micro_batches, pipeline_size)
    warmup = min(pipeline_size - pipeline_rank - 1, num_micro_batches)
    ops = [PipelineOp(FORWARD, 0, i) for i in range(warmup)]
    for i in range(num_micro_batches - warmup):
        ops += [PipelineOp(FORWARD, 0, warmup + i), PipelineOp(BACKWARD, 0, i)]
    ops += [PipelineOp(BACKWARD, 0, i) for i in range(num_micro_batches - warmup, num_micro_batches)]
    return ops


def interleaved_one_f_one_b(num_micro_batches: int, pipeline_size: int, pipeline_rank: int,
                            num_chunks: int) -> List[PipelineOp]:
    check_schedule_arguments(num_micro_batches, pipeline_size, num_chunks)
    p, v = pipeline_size, num_chunks
    total = num_micro_batches * v

    def chunk_and_micro_batch(k: int, kind: str) -> PipelineOp:
        group, in_group = divmod(k, p * v)       # groups of p micro-batches through all v chunks
        chunk = in_group // p
        if kind == BACKWARD:
            chunk = v - 1 - chunk
        return PipelineOp(kind, chunk, group * p + in_group % p)

    warmup = min((p - pipeline_rank - 1) * 2 + (v - 1) * p, total)
    ops = [chunk_and_micro_batch(k, FORWARD) for k in range(warmup)]
    for i in range(total - warmup):
        ops += [chunk_and_micro_batch(warmup + i, FORWARD), chunk_and_micro_batch(i, BACKWARD)]
    ops += [chunk_and_micro_batch(k, BACKWARD) for k in range(total - warmup, total)]
    return ops


def schedule_for(num_micro_batches: int, pipeline_size: int, pipeline_rank: int,
                 num_chunks: int = 1) -> List[PipelineOp]:
    if num_chunks == 1:
        return one_f_one_b(num_micro_batches, pipeline_size, pipeline_rank)
    return interleaved_one_f_one_b(num_micro_batches, pipeline_size, pipeline_rank, num_chunks)


def analytic_bubble_fraction(num_micro_batches: int, pipeline_size: int, num_chunks: int = 1) -> float:
    """Idle share of a step with equal-cost stages: (p - 1) / (v * m + p - 1)."""
    p = pipeline_size
    return (p - 1) / (num_chunks * num_micro_batches + p - 1)


def simulate(num_micro_batches: int, pipeline_size: int, num_chunks: int = 1, forward_time: float = 1.0,
             backward_time: float = 2.0, p2p_time: float = 0.0) -> Tuple[float, Dict[int, float]]:
    """Runs every rank's schedule on a clock with the true data dependencies.

    A virtual stage's forward waits for the previous virtual stage's forward of the same micro-batch, its
    backward for the next virtual stage's backward (and its own forward); each rank runs its operations in
    order, one at a time. Returns (step time, busy time per rank). Raises RuntimeError when the orders
    cannot complete (a deadlock). ``forward_time`` / ``backward_time`` are per chunk.
    """
    p, v = pipeline_size, num_chunks
    orders = {rank: schedule_for(num_micro_batches, p, rank, v) for rank in range(p)}
    position = {rank: 0 for rank in range(p)}
    rank_free = {rank: 0.0 for rank in range(p)}
    busy = {rank: 0.0 for rank in range(p)}
    done: Dict[Tuple[str, int, int], float] = {}  # (kind, virtual stage, micro-batch) -> finish time
    last_stage = p * v - 1
    remaining = sum(len(order) for order in orders.values())
    while remaining:
        progressed = False
        for rank in range(p):
            if position[rank] == len(orders[rank]):
                continue
            op = orders[rank][position[rank]]
            stage = op.chunk * p + rank
            if op.kind == FORWARD:
                needs = [] if stage == 0 else [(FORWARD, stage - 1, op.micro_batch)]
                cost = forward_time
            else:
                needs = [(FORWARD, stage, op.micro_batch)]
                if stage != last_stage:
                    needs.append((BACKWARD, stage + 1, op.micro_batch))
                cost = backward_time
            if any(need not in done for need in needs):
                continue
            ready = max([rank_free[rank]] + [done[need] + (p2p_time if need[1] != stage else 0.0)
                                             for need in needs])
            done[(op.kind, stage, op.micro_batch)] = rank_free[rank] = ready + cost
            busy[rank] += cost
            position[rank] += 1
            remaining -= 1
            progressed = True
        if not progressed:
            stuck = {rank: orders[rank][position[rank]] for rank in range(p) if position[rank] < len(orders[rank])}
            raise RuntimeError(f"the schedules deadlock: every rank waits ({stuck})")
    return max(rank_free.values()), busy
