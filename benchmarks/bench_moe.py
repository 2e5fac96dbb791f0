"""MoE throughput and expert-parallel traffic, in one run on 2 CPU ranks (gloo, EP = 2).

    python benchmarks/bench_moe.py [--steps 6] [--hidden 256] [--seq 128] [--batch 4]

Table 1: forward+backward tokens/s of a GPT with 8-expert top-2 MoE layers (expert FFN f) against the dense
GPT of equal ACTIVE parameters (FFN 2f: a token passes two experts of size f).
Table 2: all-to-all bytes per step each rank sends to the other rank, measured (rows the dispatcher really
sent, forward and backward) against the analytic figure for uniform routing:
4 (dispatch + combine, forward + backward) x layers x tokens x top-k x (EP-1)/EP x hidden x 4 bytes.
Nothing is asserted; timings on a shared machine are noisy.
"""

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _worker(rank, world, port, args, results):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    import torch

    from megatron.config.model import ModelConfig
    from megatron.config.moe import MoEConfig
    from megatron.core import comm
    from megatron.core import parallel_state as ps
    from megatron.model import GPTModel
    from megatron.model.moe.moe_layer import moe_layers

    torch.set_num_threads(1)
    comm.init_distributed()
    ps.initialize_model_parallel(1, 1, expert_model_parallel_size=world)
    expert_ffn, layers = 2 * args.hidden, 2
    shape = dict(num_layers=layers, hidden_size=args.hidden, num_attention_heads=8, seq_length=args.seq,
                 vocab_size=8000, padded_vocab_size=8064, hidden_dropout=0.0, attention_dropout=0.0)
    models = {
        "dense (FFN 2f)": GPTModel(ModelConfig(ffn_hidden_size=2 * expert_ffn, **shape)),
        "MoE 8 experts top-2 (FFN f)": GPTModel(ModelConfig(ffn_hidden_size=expert_ffn, **shape),
                                                 moe_config=MoEConfig(num_experts=(8,), moe_router_topk=2)),
    }
    generator = torch.Generator().manual_seed(rank)
    tokens = torch.randint(0, 8000, (args.batch, args.seq), generator=generator)
    rows = []
    for name, model in models.items():
        sent = 0
        for step in range(args.steps + 1):
            if step == 1:
                comm.barrier()
                start, sent = time.perf_counter(), 0
            loss = model(tokens, labels=tokens).mean()
            sent += sum(layer.dispatcher.sent_bytes for layer in moe_layers(model)) * 2  # the backward sends as much
            loss.backward()
        elapsed = time.perf_counter() - start
        total = torch.tensor([args.steps * args.batch * args.seq / elapsed])
        comm.all_reduce(total)
        rows.append((name, total.item(), sent / args.steps))
    analytic = 4 * layers * args.batch * args.seq * 2 * (world - 1) / world * args.hidden * 4
    results.put((rank, rows, analytic))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_worker, args=(rank, 2, port, args, results)) for rank in range(2)]
    for process in processes:
        process.start()
    replies = sorted(results.get(timeout=1800) for _ in processes)
    for process in processes:
        process.join()
    _, rows, analytic = replies[0]
    print(f"\n2 ranks (EP 2), hidden {args.hidden}, expert FFN f = {2 * args.hidden}, seq {args.seq}, "
          f"micro-batch {args.batch} per rank, {args.steps} steps, fp32, forward + backward\n")
    print("| model | tokens/s (both ranks) |")
    print("|---|---|")
    for name, tokens_per_second, _ in rows:
        print(f"| {name} | {tokens_per_second:,.0f} |")
    print("\n| rank | all-to-all bytes/step sent, measured | analytic (uniform routing) | measured / analytic |")
    print("|---|---|---|---|")
    for rank, rank_rows, _ in replies:
        measured = rank_rows[1][2]
        print(f"| {rank} | {measured:,.0f} | {analytic:,.0f} | {measured / analytic:.3f} |")


if __name__ == "__main__":
    main()
