"""Generation from real checkpoints of tiny training runs (SentencePiece vocabulary, default padding, fp32).

For GPT-2 at TP=2, Llama with GQA at TP=2, GPT-2 trained as a DeepSpeed PP=2 pipeline, Llama trained with
Megatron's 1F1B PP=2 schedule under ZeRO-2, and GPT-2 at TP=2 with sequence parallelism under ZeRO-3:
- greedy generation of 20 tokens equals, token for token, ``transformers``' greedy ``generate`` on the model
  exported with tools/checkpoint/convert_to_hf.py (generation stops at EOD on both sides);
- the logits of every KV-cache step equal a full recomputation of the sequence so far within 1e-5;
- a batch of prompts of different lengths (left-padded) gives each prompt's tokens alone.
The TP=2 checkpoints are generated from at TP=2 on 2 ranks and as a single process (resharded); the others
at the TP size in runs.CASES.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.distributed import run_on_ranks
from tests.inference.runs import CASES, REPO, generate_checks, load_tool, stop_and_dtype_checks, trained_checkpoint

NEW_TOKENS = 20
LOGIT_ATOL = 1e-5
PROMPTS = ["The for statement", "A class definition defines a class object, and", "If"]

def transformers_greedy(hf_dir, prompts_ids, max_new_tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    eos = model.config.eos_token_id
    results = []
    for ids in prompts_ids:
        with torch.no_grad():
            output = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=eos)
        generated = output[0, len(ids):].tolist()
        if eos in generated:  # both sides stop at end-of-document, the EOD itself included
            generated = generated[:generated.index(eos) + 1]
        results.append(generated)
    return results


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_equals_transformers_and_cache_equals_recompute(case, english_corpus, tmp_path_factory, tmp_path):
    save_dir, _ = trained_checkpoint(case, english_corpus, tmp_path_factory)
    hf_dir = str(tmp_path / "hf")
    load_tool("tools/checkpoint/convert_to_hf.py").main(["--checkpoint", save_dir, "--output", hf_dir])
    for world in CASES[case][3]:
        result = run_on_ranks(world, generate_checks, load_dir=save_dir, prompts=PROMPTS,
                              max_new_tokens=NEW_TOKENS)[0]
        expected = transformers_greedy(hf_dir, result["prompts_ids"], NEW_TOKENS)
        assert result["batched"] == expected, f"{case} at TP={world}: ours {result['batched']} vs HF {expected}"
        assert result["alone"] == result["batched"], f"{case} at TP={world}: batched differs from alone"
        assert result["max_logit_error"] <= LOGIT_ATOL, \
            f"{case} at TP={world}: KV-cache logits differ from recomputation by {result['max_logit_error']:.2e}"
        assert any(len(tokens) == NEW_TOKENS for tokens in expected), "every prompt stopped early: weak test"


def run_generate_text(args, timeout=300):
    """tools/generate_text.py as a plain process; (return code, stdout, stderr)."""
    # No MASTER_PORT: a plain process picks a free port for its world of one.
    env = {key: value for key, value in os.environ.items() if key not in ("MASTER_PORT", "RANK", "WORLD_SIZE")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "generate_text.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def _tool_in_world(argv):
    completions = load_tool("tools/generate_text.py").main(argv, printer=lambda line: None)
    return [completion.as_dict() for completion in completions]


def test_generate_text_cli_on_a_tp2_checkpoint(english_corpus, tmp_path_factory):
    """A plain single process reshards the TP=2 checkpoint; --json gives prompt, text and the generated ids, and
    equals the same command's result at TP=2 on 2 ranks. Sampling with a seed repeats itself; bad input is refused."""
    save_dir, _ = trained_checkpoint("llama_gqa_tp2", english_corpus, tmp_path_factory)
    args = ["--load", save_dir, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "12", "--json"]
    code, out, err = run_generate_text(args + ["--greedy"])
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [record["prompt"] for record in records] == PROMPTS[:2]
    assert all(set(record) >= {"prompt", "text", "token_ids"} and record["token_ids"] for record in records)
    at_tp2 = run_on_ranks(2, _tool_in_world, argv=args + ["--greedy"])[0]
    assert [r["token_ids"] for r in at_tp2] == [r["token_ids"] for r in records]
    assert [r["text"] for r in at_tp2] == [r["text"] for r in records]

    sampled = ["--temperature", "1.5", "--top-k", "50", "--top-p", "0.9", "--seed", "7"]
    first = run_on_ranks(1, _tool_in_world, argv=args + sampled)[0]
    again = run_on_ranks(2, _tool_in_world, argv=args + sampled)[0]
    assert [r["token_ids"] for r in first] == [r["token_ids"] for r in again], "same seed, other tokens"
    assert [r["token_ids"] for r in first] != [r["token_ids"] for r in records], "T=1.5 sampling gave greedy tokens"

    code, _, err = run_generate_text(["--load", save_dir, "--prompt", "x", "--max-new-tokens", "100"])
    assert code != 0 and "exceeds the model's context of 64 positions" in err
    code, _, err = run_generate_text(["--load", save_dir, "--prompt", "x", "--max-new-tokens", "3", "--greedy",
                                      "--temperature", "0.5"])
    assert code != 0 and "--greedy contradicts --temperature" in err


def test_stop_strings_sampling_range_and_bf16(english_corpus, tmp_path_factory):
    """A stop string ends the text before it; hot sampling (T=5) never yields a padding id; bf16 generation
    runs with its cache equal to recomputation within bf16 rounding (5e-2)."""
    save_dir, _ = trained_checkpoint("gpt_tp2", english_corpus, tmp_path_factory)
    result = run_on_ranks(2, stop_and_dtype_checks, load_dir=save_dir, prompt=PROMPTS[0], max_new_tokens=16)[0]
    full, cut, stop = result["full"], result["cut"], result["stop"]
    assert len(stop) == 3 and cut["finish_reason"] == "stop"
    assert cut["text"] == full["text"][:full["text"].index(stop)], (cut, full, stop)
    assert full["token_ids"][:len(cut["token_ids"])] == cut["token_ids"]
    assert result["padded_vocab_size"] > result["vocab_size"]          # there are padding rows to avoid
    assert len(result["sampled"]) == 54 and max(result["sampled"]) < result["vocab_size"]
    assert result["bf16_dtype"] == "torch.bfloat16" and len(result["bf16_ids"]) == 16
    assert result["bf16_logit_error"] <= 5e-2, result["bf16_logit_error"]
