"""Activation memory per rank and throughput of context-parallel attention at a long sequence, CP = 1, 2, 4.

    DS_ACCELERATOR=cpu python benchmarks/bench_context_parallel.py [--seq-length 8192] [--cp 1 2 4]

For each degree CP and each algorithm (ring attention with zig-zag chunks; Ulysses all-to-all) it spawns CP
gloo ranks; each rank runs one transformer-layer-shaped block on its s/CP tokens (QKV projection, causal
context-parallel attention, output projection, GELU MLP), forward and backward, fp32, batch 1.

Activation memory is what autograd keeps for the backward pass: the bytes of every distinct tensor saved by
the block (``torch.autograd.graph.saved_tensors_hooks``), i.e. the memory activation recomputation would
trade. The analytic share is the CP=1 figure / CP (every saved tensor has a sequence dimension of s/CP).
"Peak RSS +MiB" is the rise of the process's peak resident memory over the run (transients included: the
attention score blocks, [s/CP x s/CP] per head for the ring, [s x s] per local head for Ulysses). Tokens/s is
the global sequence length over the slowest rank's forward+backward time. Timings on a shared CPU machine
are noisy; run it alone.
"""

import argparse
import os
import resource
import socket
import time

import sys

import torch
import torch.multiprocessing as mp

# Spawned ranks must import this checkout's megatron, not another one on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-length", type=int, default=8192)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--cp", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--algorithms", nargs="+", default=["ring", "ulysses"], choices=["ring", "ulysses"])
    return parser.parse_args()


class _Block(torch.nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(hidden, 3 * hidden)
        self.proj = torch.nn.Linear(hidden, hidden)
        self.fc1, self.fc2 = torch.nn.Linear(hidden, 4 * hidden), torch.nn.Linear(4 * hidden, hidden)

    def forward(self, x, positions, attention):
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        context = attention(q, k, v, positions, None, causal=True)
        x = x + self.proj(context.transpose(1, 2).reshape(b, s, h))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def _saved_bytes(block, x, positions, attention):
    seen, total = set(), [0]

    def pack(tensor):
        key = (tensor.untyped_storage().data_ptr(), tensor.dtype, tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = block(x, positions, attention)
    return output, total[0]


def _worker(rank, world, algorithm, args, port, results):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"})
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    from deepspeed.utils import logger as ds_logger

    from megatron.core import comm, parallel_state as ps
    from megatron.model.context_parallel import ring_attention, ulysses_attention, zigzag_indices

    ds_logger.setLevel("ERROR")
    comm.init_distributed("gloo")
    ps.initialize_model_parallel(context_parallel_size=world)
    attention = ring_attention if algorithm == "ring" else ulysses_attention
    torch.manual_seed(0)
    block = _Block(args.hidden_size, args.heads)
    positions = zigzag_indices(args.seq_length, world, rank)
    x = torch.randn(1, args.seq_length // world, args.hidden_size, requires_grad=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    comm.barrier()
    started = time.perf_counter()
    output, saved = _saved_bytes(block, x, positions, attention)
    output.sum().backward()
    seconds = time.perf_counter() - started
    peak_rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB -> MiB
    rows = comm.all_gather_object((saved / 2**20, peak_rise, seconds))
    if rank == 0:
        results.put(rows)
    ps.destroy_model_parallel()
    comm.destroy_world()


def _run(world, algorithm, args):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_worker, args=(rank, world, algorithm, args, port, results))
                 for rank in range(world)]
    for process in processes:
        process.start()
    try:
        rows = results.get(timeout=1200)  # a rank that crashed never reports: fail instead of hanging
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return rows


def main():
    args = _arguments()
    print(f"seq {args.seq_length}, hidden {args.hidden_size}, {args.heads} heads, batch 1, fp32, one causal "
          f"block forward+backward per rank, CPU ({os.cpu_count()} cores)")
    header = (f"{'algorithm':<9} {'CP':>3} {'activations MiB/rank':>21} {'analytic 1/CP':>14} "
              f"{'ratio':>6} {'peak RSS +MiB/rank':>19} {'tokens/s':>9}")
    print(header)
    print("-" * len(header))
    for algorithm in args.algorithms:
        baseline = None
        for world in args.cp:
            if algorithm == "ulysses" and args.heads % world:
                continue
            rows = _run(world, algorithm, args)
            saved = max(row[0] for row in rows)
            if baseline is None:
                baseline = saved * world  # the first degree run gives the CP=1-equivalent total
            analytic = baseline / world
            peak = max(row[1] for row in rows)
            tokens_per_second = args.seq_length / max(row[2] for row in rows)
            print(f"{algorithm:<9} {world:>3} {saved:21.1f} {analytic:14.1f} {saved / analytic:6.2f} "
                  f"{peak:19.1f} {tokens_per_second:9.0f}")


if __name__ == "__main__":
    main()
