"""Training throughput of megatron-ds against Hugging Face `transformers`, side by side in one run.

Same shape (~100M parameters), same sequence length, same DeepSpeed config (ZeRO-1, fp32, gradient clipping),
one process (TP=1), same machine and threads. megatron-ds trains through its own engine builder (the path
`pretrain_gpt_ds.py` takes: Megatron's parameter groups, torch's fused AdamW, Megatron's LR schedule); the
Hugging Face model trains through `deepspeed.initialize` with torch's fused AdamW, the optimizer the
`transformers` Trainer picks by default. The two alternate step by step, so machine noise hits both alike.

Prints, per model, the median time of forward, backward and optimizer step, tokens/s, TFLOP/s and MFU, and
per family the ratio ours / HF with the spread of the step-by-step ratios.

The process runs with glibc malloc tuned for training (megatron/training/host_allocator.py), as
examples_deepspeed/pretrain_gpt_cpu.sh does; it re-executes itself with those settings unless they are
already set or --glibc-defaults is given (which measures both models with glibc's defaults instead).

    DS_ACCELERATOR=cpu python benchmarks/bench_vs_hf.py [--family gpt llama] [--steps 8] [--seq-length 512]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.training.host_allocator import export_line, missing_settings  # noqa: E402 (torch-free)

SHAPES = {
    # GPT-2 small: 12 x 768, 12 heads, GPT-2 vocabulary (~124M parameters with embeddings).
    "gpt": dict(model_family="gpt", num_layers=12, hidden_size=768, num_attention_heads=12, vocab_size=50257),
    # A Llama of about the same size: 12 x 768, 12 heads with 4 KV heads (GQA), SwiGLU 2048, 32k vocabulary.
    "llama": dict(model_family="llama", num_layers=12, hidden_size=768, num_attention_heads=12,
                  num_key_value_heads=4, ffn_hidden_size=2048, vocab_size=32000),
}
DS_CONFIG = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": 1,
             "zero_optimization": {"stage": 1}, "gradient_clipping": 1.0, "steps_per_print": 10 ** 9}
LR = 1e-4


def deepspeed_config(bf16):
    return {**DS_CONFIG, "bf16": {"enabled": True}} if bf16 else dict(DS_CONFIG)


def ours(family, seq_length, bf16=False):
    """(engine, loss function, training FLOPs per token, parameters) built the way pretrain_gpt_ds.py builds them."""
    from megatron.config import resolve_config
    from megatron.model import GPTModel, model_flops_per_token
    from megatron.training.engine import build_engine

    shape = dict(SHAPES[family])
    vocab_size = shape.pop("vocab_size")
    config = resolve_config({**shape, "seq_length": seq_length, "max_position_embeddings": seq_length,
                             "train_iters": 1000, "lr": LR, "hidden_dropout": 0.0, "attention_dropout": 0.0},
                            deepspeed_config=deepspeed_config(bf16), world_size=1).with_vocab(vocab_size)
    engine = build_engine(config, lambda: GPTModel(config.model))

    def loss_fn(tokens):
        return engine(tokens[:, :-1], labels=tokens[:, 1:]).mean()
    return engine, loss_fn, model_flops_per_token(config.model)


def hugging_face(family, seq_length, bf16=False):
    import deepspeed
    import torch
    import transformers

    shape = SHAPES[family]
    if family == "gpt":
        hf_config = transformers.GPT2Config(n_layer=shape["num_layers"], n_embd=shape["hidden_size"],
                                            n_head=shape["num_attention_heads"], vocab_size=shape["vocab_size"],
                                            n_positions=seq_length, resid_pdrop=0.0, embd_pdrop=0.0,
                                            attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(hf_config)
    else:
        hf_config = transformers.LlamaConfig(num_hidden_layers=shape["num_layers"], hidden_size=shape["hidden_size"],
                                             num_attention_heads=shape["num_attention_heads"],
                                             num_key_value_heads=shape["num_key_value_heads"],
                                             intermediate_size=shape["ffn_hidden_size"],
                                             vocab_size=shape["vocab_size"], max_position_embeddings=seq_length)
        model = transformers.LlamaForCausalLM(hf_config)
    model.config._attn_implementation = "sdpa"
    # Training needs no key/value cache; with the default use_cache=True the HF model would also build one.
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(bf16))

    def loss_fn(tokens):
        # HF shifts the labels inside: inputs and labels are the same seq_length tokens.
        return engine(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss
    return engine, loss_fn


def timed_step(engine, loss_fn, tokens):
    """Seconds spent in forward, backward and the optimizer step of one training step."""
    start = time.perf_counter()
    loss = loss_fn(tokens)
    forward_done = time.perf_counter()
    engine.backward(loss)
    backward_done = time.perf_counter()
    engine.step()
    return forward_done - start, backward_done - forward_done, time.perf_counter() - backward_done


def reexec_with_tuned_allocator_if_needed(args):
    missing = missing_settings()
    if args.glibc_defaults or not missing:
        return
    print(f"re-running with glibc malloc tuned for training: {export_line(missing)}", flush=True)
    os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **missing})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", default=["gpt", "llama"], choices=sorted(SHAPES))
    parser.add_argument("--seq-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model (they alternate)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--bf16", action="store_true", help="both in bf16 (the DeepSpeed config's bf16 block)")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="measure with glibc's default malloc settings instead of the tuned ones")
    args = parser.parse_args()
    reexec_with_tuned_allocator_if_needed(args)

    import torch
    from deepspeed.utils import logger

    from megatron.core import comm
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import model_parallel_manual_seed
    from megatron.training.peak_flops import device_peak_tflops

    comm.init_distributed("gloo")
    ps.initialize_model_parallel(1)
    logger.setLevel("WARNING")
    gemm_dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak, peak_source = device_peak_tflops(dtype=gemm_dtype)
    allocator = "glibc defaults" if missing_settings() else "glibc malloc tuned"
    print(f"threads {torch.get_num_threads()}, peak {peak:.3f} TFLOP/s ({peak_source}), seq {args.seq_length}, "
          f"micro-batch 1, ZeRO-1 {'bf16' if args.bf16 else 'fp32'}, fused AdamW, {allocator}")
    rows, ratios = [], {}
    for family in args.family:
        model_parallel_manual_seed(1234)
        our_engine, our_loss, flops_per_token = ours(family, args.seq_length, args.bf16)
        hf_engine, hf_loss = hugging_face(family, args.seq_length, args.bf16)
        runs = {"megatron-ds": (our_engine, our_loss), "transformers": (hf_engine, hf_loss)}
        vocab = SHAPES[family]["vocab_size"]
        generator = torch.Generator().manual_seed(0)
        batch = lambda: torch.randint(0, vocab, (1, args.seq_length + 1), generator=generator)  # noqa: E731
        for name, (engine, loss_fn) in runs.items():  # warm-up: allocator, kernels, optimizer state
            for _ in range(args.warmup):
                timed_step(engine, loss_fn, batch())
        phases = {name: [] for name in runs}
        for step in range(args.steps):
            tokens = batch()  # the same tokens for both
            for name, (engine, loss_fn) in runs.items():
                phases[name].append(timed_step(engine, loss_fn, tokens))
            if step == args.steps // 2:
                # The GEMM peak is re-measured midway and the best kept: on a shared machine a single start-up
                # measurement can land in a busy moment and inflate MFU.
                peak = max(peak, device_peak_tflops(dtype=gemm_dtype)[0])
        pair_ratios = [sum(hf) / sum(our) for our, hf in zip(phases["megatron-ds"], phases["transformers"])]
        ratios[family] = pair_ratios
        for name, (engine, _) in runs.items():
            forward, backward, optimizer = (statistics.median(column) for column in zip(*phases[name]))
            step_seconds = statistics.median(sum(step) for step in phases[name])
            tokens_per_second = args.seq_length / step_seconds
            tflops = flops_per_token * tokens_per_second / 1e12  # training FLOPs (fwd + bwd), same count for both
            parameters = sum(p.numel() for p in engine.module.parameters())
            rows.append((family, name, parameters, forward, backward, optimizer, tokens_per_second, tflops,
                         tflops / peak))
            engine.destroy()
    print(f"peak used for MFU: {peak:.3f} TFLOP/s (best of the measurements)\n")
    print(f"{'family':<7} {'implementation':<14} {'params':>12} {'fwd s':>7} {'bwd s':>7} {'optim s':>8} "
          f"{'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6}")
    for family, name, parameters, forward, backward, optimizer, tokens_per_second, tflops, mfu in rows:
        print(f"{family:<7} {name:<14} {parameters:>12,} {forward:>7.3f} {backward:>7.3f} {optimizer:>8.3f} "
              f"{tokens_per_second:>9.1f} {tflops:>8.4f} {mfu * 100:>5.1f}%")
    print()
    for family in args.family:
        ours_tps = next(r[6] for r in rows if r[0] == family and r[1] == "megatron-ds")
        hf_tps = next(r[6] for r in rows if r[0] == family and r[1] == "transformers")
        spread = sorted(ratios[family])
        print(f"{family}: megatron-ds / transformers tokens/s = {ours_tps / hf_tps:.3f}x (step-by-step ratios "
              f"{spread[0]:.3f} .. {spread[-1]:.3f}, ours faster in {sum(r > 1 for r in spread)}/{len(spread)})")
    ps.destroy_model_parallel()
    comm.destroy_world()


if __name__ == "__main__":
    main()
