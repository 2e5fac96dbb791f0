"""Training throughput of megatron-ds's model against Hugging Face `transformers`, side by side in one run.

Same shape (~100M parameters), same sequence length, same DeepSpeed config (ZeRO-1, fp32, AdamW), one
process (TP=1), same machine and thread count; each model trains a few warm-up steps and then a few timed
steps, alternating so that machine noise hits both. Prints tokens/s, TFLOP/s and MFU per model and the
ratio ours / HF per family.

    DS_ACCELERATOR=cpu python benchmarks/bench_vs_hf.py [--family gpt llama] [--steps 4] [--seq-length 512]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import deepspeed  # noqa: E402
import torch  # noqa: E402

from megatron.config import resolve_config  # noqa: E402
from megatron.core import comm  # noqa: E402
from megatron.core import parallel_state as ps  # noqa: E402
from megatron.core.tensor_parallel import model_parallel_manual_seed  # noqa: E402
from megatron.model import GPTModel, model_flops_per_token  # noqa: E402
from megatron.training.peak_flops import device_peak_tflops  # noqa: E402

SHAPES = {
    # GPT-2 small: 12 x 768, 12 heads, GPT-2 vocabulary (~124M parameters with embeddings).
    "gpt": dict(model_family="gpt", num_layers=12, hidden_size=768, num_attention_heads=12, vocab_size=50257),
    # A Llama of about the same size: 12 x 768, 12 heads with 4 KV heads (GQA), SwiGLU 2048, 32k vocabulary.
    "llama": dict(model_family="llama", num_layers=12, hidden_size=768, num_attention_heads=12,
                  num_key_value_heads=4, ffn_hidden_size=2048, vocab_size=32000),
}
DS_CONFIG = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": 1,
             "zero_optimization": {"stage": 1}, "gradient_clipping": 1.0, "steps_per_print": 10 ** 9}


def ours(family, seq_length):
    shape = dict(SHAPES[family])
    vocab_size = shape.pop("vocab_size")
    config = resolve_config({**shape, "seq_length": seq_length, "max_position_embeddings": seq_length,
                             "micro_batch_size": 1, "global_batch_size": 1, "train_iters": 1, "lr": 1e-4,
                             "hidden_dropout": 0.0, "attention_dropout": 0.0}, world_size=1).with_vocab(vocab_size)
    model = GPTModel(config.model)

    def loss_fn(engine, tokens):
        per_token = engine(tokens[:, :-1], labels=tokens[:, 1:])
        return per_token.mean()
    return model, loss_fn, model_flops_per_token(config.model), config.model.padded_vocab_size


def hugging_face(family, seq_length):
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

    def loss_fn(engine, tokens):
        return engine(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss
    return model, loss_fn, None, shape["vocab_size"]


def make_engine(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=dict(DS_CONFIG))
    return engine


def time_steps(engine, loss_fn, batches):
    times = []
    for tokens in batches:
        start = time.perf_counter()
        loss = loss_fn(engine, tokens)
        engine.backward(loss)
        engine.step()
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", default=["gpt", "llama"], choices=sorted(SHAPES))
    parser.add_argument("--seq-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (ours, HF, ours, HF, ...)")
    args = parser.parse_args()

    comm.init_distributed("gloo")
    ps.initialize_model_parallel(1)
    from deepspeed.utils import logger
    logger.setLevel("WARNING")
    peak, peak_source = device_peak_tflops()
    print(f"threads {torch.get_num_threads()}, peak {peak:.3f} TFLOP/s ({peak_source}), seq {args.seq_length}, "
          f"micro-batch 1, ZeRO-1 fp32 AdamW")
    rows = []
    for family in args.family:
        model_parallel_manual_seed(1234)
        built = {"megatron-ds": ours(family, args.seq_length), "transformers": hugging_face(family, args.seq_length)}
        flops_per_token = built["megatron-ds"][2]  # the same count for both: identical shapes
        engines = {name: make_engine(model) for name, (model, _, _, _) in built.items()}
        vocab = min(vocab for _, _, _, vocab in built.values())
        generator = torch.Generator().manual_seed(0)
        batch = lambda: torch.randint(0, vocab, (1, args.seq_length + 1), generator=generator)  # noqa: E731
        times = {name: [] for name in built}
        for name in built:  # warm-up: allocator, kernels, optimizer state
            time_steps(engines[name], built[name][1], [batch() for _ in range(2)])
        for _ in range(args.rounds):
            for name in built:
                times[name] += time_steps(engines[name], built[name][1], [batch() for _ in range(args.steps)])
            # The GEMM peak is re-measured between rounds and the best kept: on a shared machine a single
            # start-up measurement can land in a busy moment and inflate MFU.
            peak = max(peak, device_peak_tflops()[0])
        for name in built:
            seconds = statistics.median(times[name])
            tokens_per_second = args.seq_length / seconds
            tflops = flops_per_token * tokens_per_second / 1e12  # training FLOPs (fwd + bwd)
            parameters = sum(p.numel() for p in built[name][0].parameters())
            rows.append((family, name, parameters, tokens_per_second, tflops, tflops / peak))
        for engine in engines.values():
            engine.destroy()
    print(f"peak used for MFU: {peak:.3f} TFLOP/s (best of the measurements)")
    print(f"\n{'family':<7} {'implementation':<14} {'params':>12} {'tokens/s':>10} {'TFLOP/s':>9} {'MFU':>7}")
    for family, name, parameters, tokens_per_second, tflops, mfu in rows:
        print(f"{family:<7} {name:<14} {parameters:>12,} {tokens_per_second:>10.1f} {tflops:>9.4f} {mfu * 100:>6.1f}%")
    for family in args.family:
        ours_tps = next(r[3] for r in rows if r[0] == family and r[1] == "megatron-ds")
        hf_tps = next(r[3] for r in rows if r[0] == family and r[1] == "transformers")
        print(f"{family}: megatron-ds / transformers tokens/s = {ours_tps / hf_tps:.2f}x")
    ps.destroy_model_parallel()
    comm.destroy_world()


if __name__ == "__main__":
    main()
