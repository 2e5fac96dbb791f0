"""Measured pipeline bubble per schedule, against the analytic (p-1)/(m+p-1) and (p-1)/(v*m+p-1).

    DS_ACCELERATOR=cpu python benchmarks/bench_pipeline.py [--pipeline-size 2] [--micro-batches 2 4 8]

Spawns ``--pipeline-size`` ranks (one pipeline, DP = TP = 1, one thread each) and trains a GPT (tied
embedding) with each schedule: DeepSpeed's PipelineEngine (``deepspeed``), Megatron's 1F1B (``1f1b``) and
interleaved 1F1B with 2 model chunks per rank (``interleaved``), fp32, ZeRO-1.

What is measured, per rank and step: the step time, the time spent computing forward and backward passes,
and the time in the optimizer phase (gradient reductions, clipping, step). A rank that finishes its
forward/backward passes early waits for the others inside the optimizer phase's collectives (gradient-norm
all-reduce, tied-embedding reduction), so the forward/backward makespan is the step time minus the
*smallest* optimizer time over the ranks (the rank that arrived last waited least). The bubble of a rank is
1 - its compute / that makespan; "measured" is the mean over ranks, next to the analytic bubble (equal
stages, free communication) and the stages' imbalance (slowest rank's compute / mean: the first stage holds
the embedding, the last the head and loss). Compute and optimizer times come from wrapping the engines'
entry points with timers (DeepSpeed's instruction table; ScheduledPipeline's methods).
"""

import argparse
import os
import socket
import time
from collections import defaultdict

import torch
import torch.multiprocessing as mp

SCHEDULES = ("deepspeed", "1f1b", "interleaved")


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline-size", type=int, default=2)
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after 1 warm-up)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    return parser.parse_args()


class _Clock:
    """Accumulates seconds by category ("compute", "optimizer")."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def wrap(self, category, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[category] += time.perf_counter() - started
        return timed


def _model_config(args):
    from megatron.config.model import ModelConfig

    config = ModelConfig(num_layers=args.layers, hidden_size=args.hidden_size, num_attention_heads=8,
                         seq_length=args.seq_length, attention_dropout=0.0, hidden_dropout=0.0)
    return config.with_vocab(1024, 1)


def _deepspeed_config(args, micro_batches):
    return {"train_micro_batch_size_per_gpu": args.micro_batch_size, "gradient_accumulation_steps": micro_batches,
            "train_batch_size": args.micro_batch_size * micro_batches, "gradient_clipping": 1.0,
            "zero_optimization": {"stage": 1}, "steps_per_print": 10 ** 9}


def _batches(args, count):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 1024, (count, args.micro_batch_size, args.seq_length + 1), generator=generator)
    return [{"tokens": t[:, :-1], "labels": t[:, 1:], "loss_mask": torch.ones(args.micro_batch_size, args.seq_length),
             "position_ids": torch.arange(args.seq_length).expand(args.micro_batch_size, -1)} for t in tokens]


def _build(args, schedule, micro_batches, clock):
    """(step function, engine) with the forward/backward and optimizer entry points timed."""
    import deepspeed
    from deepspeed.runtime.pipe import schedule as ds_schedule

    from megatron.pipeline import GPTPipelineModule, StageMPU, build_stage_chunks, pipe_batches, scheduled_pipeline
    from megatron.pipeline import prepare_pipeline_engine

    config = _model_config(args)
    if schedule == "deepspeed":
        module = GPTPipelineModule(config)
        engine, *_ = deepspeed.initialize(model=module, optimizer=torch.optim.AdamW(module.parameters(), lr=1e-4),
                                          config=_deepspeed_config(args, micro_batches))
        prepare_pipeline_engine(engine)
        table = dict(type(engine)._INSTRUCTION_MAP)
        for instruction in (ds_schedule.ForwardPass, ds_schedule.BackwardPass):
            table[instruction] = clock.wrap("compute", table[instruction])
        for instruction in (ds_schedule.ReduceGrads, ds_schedule.ReduceTiedGrads, ds_schedule.OptimizerStep):
            table[instruction] = clock.wrap("optimizer", table[instruction])
        engine._INSTRUCTION_MAP = table  # this engine only; _exec_schedule reads it through self
        return lambda batches: engine.train_batch(pipe_batches(batches)), engine
    chunks = build_stage_chunks(config, num_chunks=2 if schedule == "interleaved" else 1)
    engine, *_ = deepspeed.initialize(model=chunks, optimizer=torch.optim.AdamW(chunks.parameters(), lr=1e-4),
                                      config=_deepspeed_config(args, micro_batches), mpu=StageMPU())
    pipeline = scheduled_pipeline(engine, config)
    pipeline._forward = clock.wrap("compute", pipeline._forward)
    pipeline._backward = clock.wrap("compute", pipeline._backward)
    pipeline._finish_step = clock.wrap("optimizer", pipeline._finish_step)
    return pipeline.train_step, engine


def _measure(args, schedule, micro_batches):
    """This rank's mean seconds per step: (step, optimizer phase, forward/backward compute)."""
    from megatron.core import comm

    clock = _Clock()
    step, engine = _build(args, schedule, micro_batches, clock)
    batches = _batches(args, micro_batches)
    step(iter(batches))  # warm-up: allocations, first-call paths
    clock.seconds.clear()
    comm.barrier()
    started = time.perf_counter()
    for _ in range(args.steps):
        step(iter(batches))
    total = (time.perf_counter() - started) / args.steps
    engine.destroy()
    return total, clock.seconds["optimizer"] / args.steps, clock.seconds["compute"] / args.steps


def _worker(rank, args, port, results):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(args.pipeline_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"})
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.pipeline_size))
    from deepspeed.utils import logger as ds_logger

    from megatron.core import comm
    from megatron.core import parallel_state as ps

    ds_logger.setLevel("ERROR")
    comm.init_distributed("gloo")
    ps.initialize_model_parallel(1, args.pipeline_size)
    rows = []
    for micro_batches in args.micro_batches:
        for schedule in SCHEDULES:
            if schedule == "interleaved" and (micro_batches % args.pipeline_size
                                              or args.layers % (2 * args.pipeline_size)):
                continue
            measured = _measure(args, schedule, micro_batches)
            rows.append(((schedule, micro_batches), comm.all_gather_object(measured)))
    if rank == 0:
        results.put(rows)
    comm.destroy_world()


def _report(args, rows):
    from megatron.pipeline.schedules import analytic_bubble_fraction

    p = args.pipeline_size
    print(f"PP={p}, {args.layers} layers, hidden {args.hidden_size}, seq {args.seq_length}, micro-batch "
          f"{args.micro_batch_size}, fp32 ZeRO-1, {args.steps} timed steps, CPU ({os.cpu_count()} cores, "
          f"{max(1, (os.cpu_count() or 1) // p)} thread(s) per rank)")
    header = (f"{'schedule':<12} {'v':>2} {'m':>3} {'step s':>8} {'fwd/bwd s':>9} {'compute s':>9} "
              f"{'idle s':>7} {'measured':>9} {'analytic':>9} {'imbalance':>9}")
    print(header)
    print("-" * len(header))
    for (schedule, m), per_rank in rows:
        v = 2 if schedule == "interleaved" else 1
        step = max(total for total, _, _ in per_rank)
        makespan = step - min(optimizer for _, optimizer, _ in per_rank)
        compute = [c for _, _, c in per_rank]
        mean_compute = sum(compute) / p
        measured = sum(1 - c / makespan for c in compute) / p
        print(f"{schedule:<12} {v:>2} {m:>3} {step:8.3f} {makespan:9.3f} {mean_compute:9.3f} "
              f"{makespan - mean_compute:7.3f} {measured:9.3f} {analytic_bubble_fraction(m, p, v):9.3f} "
              f"{max(compute) / mean_compute:9.2f}")


def main():
    args = _arguments()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_worker, args=(rank, args, port, results))
                 for rank in range(args.pipeline_size)]
    for process in processes:
        process.start()
    rows = results.get()
    for process in processes:
        process.join()
    _report(args, rows)


if __name__ == "__main__":
    main()
