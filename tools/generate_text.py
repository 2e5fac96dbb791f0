"""Generate text from a checkpoint of any layout (TP, PP, ZeRO stage), with the tokenizer training used.

    python tools/generate_text.py --load runs/ckpt --prompt "The for statement" --max-new-tokens 40 --greedy
    python tools/generate_text.py --load runs/ckpt --prompt "A" --prompt "B" --max-new-tokens 40 \
        --temperature 0.8 --top-k 50 --top-p 0.95 --seed 7 --json
    deepspeed --num_gpus 2 tools/generate_text.py --load runs/ckpt ...    # TP=2 over the launched ranks

As a plain process it runs the whole model (the checkpoint is resharded); under a launcher every rank is one
tensor-parallel rank (TP = the number of processes). With --json it prints one JSON object per prompt with
``prompt``, ``text`` and ``token_ids`` (the generated ids only), plus ``finish_reason``.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="a --save folder (its `latest`) or a global_stepN folder")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, required=True, help="tokens to generate after each prompt")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (the default without sampling flags)")
    parser.add_argument("--temperature", type=float, default=None, help="sample from softmax(logits / T)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=None, help="sample within the top probability mass p")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampling generator (default 1234)")
    parser.add_argument("--stop", action="append", default=[], help="stop a prompt's generation at this string")
    parser.add_argument("--ignore-eod", action="store_true", help="keep generating past end-of-document")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weights and compute dtype")
    parser.add_argument("--json", action="store_true", help="one JSON object per prompt instead of plain text")
    args = parser.parse_args(argv)
    sampling = [flag for flag, value in (("--temperature", args.temperature), ("--top-k", args.top_k),
                                         ("--top-p", args.top_p), ("--seed", args.seed)) if value is not None]
    if args.greedy and sampling:
        parser.error(f"--greedy contradicts {' '.join(sampling)}: drop --greedy to sample, or the sampling flags")
    return args


def sampling_params(args):
    from megatron.inference import SamplingParams

    if not any(value is not None for value in (args.temperature, args.top_k, args.top_p, args.seed)):
        return SamplingParams(greedy=True)
    return SamplingParams(greedy=False, temperature=1.0 if args.temperature is None else args.temperature,
                          top_k=args.top_k or 0, top_p=1.0 if args.top_p is None else args.top_p,
                          seed=1234 if args.seed is None else args.seed)


def main(argv=None, printer=print):
    args = parse_args(argv)
    params = sampling_params(args)
    from megatron.core import comm
    from megatron.core import parallel_state as ps
    from megatron.inference import generate_text, load_model_for_inference
    from megatron.inference.world import init_inference_world

    owns_world = init_inference_world()
    try:
        loaded = load_model_for_inference(args.load, args.dtype)
        completions = generate_text(loaded.model, loaded.tokenizer, args.prompt, args.max_new_tokens, params,
                                    stop=args.stop, stop_at_eod=not args.ignore_eod)
        if comm.get_rank() == 0:
            for completion in completions:
                printer(json.dumps(completion.as_dict()) if args.json
                        else f"{completion.prompt}{completion.text}\n{'-' * 40}")
        return completions
    finally:
        ps.destroy_model_parallel()
        if owns_world:
            comm.destroy_world()


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"generate_text.py: {error}")
