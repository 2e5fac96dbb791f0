"""Generation throughput of megatron-ds against Hugging Face ``transformers``' ``generate``, in one run.

The same weights on both sides: a randomly initialised model (GPT-2 or Llama shape) is exported through the
project's Hugging Face mapping (megatron/checkpointing/hf, what tools/checkpoint/convert_to_hf.py writes) and
loaded into ``transformers``. One process, fp32, greedy, KV cache on both sides, no stop at end-of-document.

- prefill tokens/s: prompt tokens / time of a generation of one token (the prompt pass and one choice);
- decode tokens/s: batch x (N - 1) / (time of N new tokens - time of 1 new token).
Each measurement is the median of --repeats runs, ours and theirs alternating, at batch 1 and 8.

    DS_ACCELERATOR=cpu python benchmarks/bench_generation.py [--family gpt] [--prompt-length 128] [--new-tokens 32]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = {
    "gpt": dict(model_family="gpt", num_layers=6, hidden_size=512, num_attention_heads=8, vocab_size=8000),
    "llama": dict(model_family="llama", num_layers=6, hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
                  ffn_hidden_size=1408, vocab_size=8000),
}


def build_models(family, context):
    """(our GPTModel, the transformers model with the same weights), both in eval mode, fp32."""
    import torch
    import transformers

    from megatron.checkpointing.hf import gpt2, llama
    from megatron.config import resolve_config
    from megatron.model import GPTModel

    shape = dict(SHAPES[family])
    vocab = shape.pop("vocab_size")
    config = resolve_config({**shape, "seq_length": context, "max_position_embeddings": context, "train_iters": 1,
                             "lr": 1e-4, "hidden_dropout": 0.0, "attention_dropout": 0.0},
                            deepspeed_config={"zero_optimization": {"stage": 0}}, world_size=1).with_vocab(vocab)
    ours = GPTModel(config.model).eval()
    weights = {name: tensor.detach().clone() for name, tensor in ours.state_dict().items()
               if not name.endswith("_table")}
    for name in ("embedding.word_embeddings.weight", "output_layer.linear.weight"):
        if name in weights:
            weights[name] = weights[name][:vocab]          # the export strips the vocabulary padding
    mapping = gpt2 if family == "gpt" else llama
    hf_config = mapping.hf_config(config.model, vocab)
    theirs = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    # strict=False: a tied head (GPT-2's lm_head) is not a tensor of its own; the logits check below is the proof.
    _, unexpected = theirs.load_state_dict(mapping.to_hf(weights, config.model), strict=False)
    assert not unexpected, unexpected
    theirs.tie_weights()
    theirs.eval()
    theirs.generation_config.eos_token_id = None
    theirs.generation_config.pad_token_id = 0
    with torch.no_grad():
        probe = torch.randint(0, vocab, (1, 16))
        error = (ours(probe)[..., :vocab] - theirs(probe).logits).abs().max().item()
    assert error < 1e-3, f"the exported model computes something else (logits differ by {error})"
    return ours, theirs, vocab


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(SHAPES), default="gpt")
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from megatron.core import comm
    from megatron.inference import generate_ids
    from megatron.inference.world import init_inference_world

    init_inference_world()
    torch.manual_seed(0)
    ours, theirs, vocab = build_models(args.family, args.prompt_length + args.new_tokens)
    rows = []
    for batch in args.batch_sizes:
        prompts = torch.randint(0, vocab, (batch, args.prompt_length))

        def run_ours(new):
            return lambda: generate_ids(ours, prompts.tolist(), new)

        def run_theirs(new):
            def run():
                with torch.no_grad():
                    theirs.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                                    min_new_tokens=new, do_sample=False)
            return run

        run_ours(2)(), run_theirs(2)()                    # warm-up
        times = {key: [] for key in ("ours1", "oursN", "theirs1", "theirsN")}
        for _ in range(args.repeats):
            times["ours1"].append(timed(run_ours(1)))
            times["theirs1"].append(timed(run_theirs(1)))
            times["oursN"].append(timed(run_ours(args.new_tokens)))
            times["theirsN"].append(timed(run_theirs(args.new_tokens)))
        median = {key: statistics.median(values) for key, values in times.items()}
        for who in ("ours", "theirs"):
            prefill = batch * args.prompt_length / median[f"{who}1"]
            decode = batch * (args.new_tokens - 1) / max(median[f"{who}N"] - median[f"{who}1"], 1e-9)
            rows.append((batch, who, prefill, decode))

    print(f"\n{args.family}: {SHAPES[args.family]}, prompt {args.prompt_length} tokens, {args.new_tokens} new, fp32, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'batch':>5} | {'model':<14} | {'prefill tok/s':>13} | {'decode tok/s':>12}")
    print("-" * 56)
    by_key = {(b, w): (p, d) for b, w, p, d in rows}
    for batch in args.batch_sizes:
        (op, od), (tp, td) = by_key[(batch, "ours")], by_key[(batch, "theirs")]
        print(f"{batch:>5} | {'megatron-ds':<14} | {op:>13.0f} | {od:>12.1f}")
        print(f"{batch:>5} | {'transformers':<14} | {tp:>13.0f} | {td:>12.1f}")
        print(f"{batch:>5} | {'ratio ours/HF':<14} | {op / tp:>13.2f} | {od / td:>12.2f}")
    comm.destroy_world()


if __name__ == "__main__":
    main()
