"""Generation from real checkpoints of tiny training runs (SentencePiece vocabulary, default padding, fp32).

For GPT-2 at TP=2, Llama with GQA at TP=2, and GPT-2 trained as a PP=2 pipeline:
- greedy generation of 20 tokens equals, token for token, ``transformers``' greedy ``generate`` on the model
  exported with tools/checkpoint/convert_to_hf.py (generation stops at EOD on both sides);
- the logits of every KV-cache step equal a full recomputation of the sequence so far within 1e-5;
- a batch of prompts of different lengths (left-padded) gives each prompt's tokens alone.
The TP=2 checkpoints are generated from at TP=2 on 2 ranks and as a single process (resharded).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.distributed import run_on_ranks
from tests.inference.runs import REPO, generate_checks, load_tool, run_values, train_and_save

NEW_TOKENS = 20
LOGIT_ATOL = 1e-5
PROMPTS = ["The for statement", "A class definition defines a class object, and", "If"]

CASES = {
    # name: (family, world size of training, flag overrides, DeepSpeed JSON, generation world sizes)
    "gpt_tp2": ("gpt", {"tensor_model_parallel_size": 2}, {"zero_optimization": {"stage": 1}}, (2, 1)),
    "llama_gqa_tp2": ("llama", {"tensor_model_parallel_size": 2}, {"zero_optimization": {"stage": 1}}, (2, 1)),
    "gpt_pp2": ("gpt", {"pipeline_model_parallel_size": 2}, {"zero_optimization": {"stage": 1}}, (1,)),
}

_CHECKPOINTS = {}


def trained_checkpoint(case, corpus, tmp_path_factory):
    """(save dir, validation losses by iteration) of one real 2-rank training run per case, made once."""
    if case not in _CHECKPOINTS:
        family, overrides, deepspeed_config, _ = CASES[case]
        save_dir = str(tmp_path_factory.mktemp(f"ckpt-{case}"))
        evals = run_on_ranks(2, train_and_save, values=run_values(family, corpus, save=save_dir, **overrides),
                             deepspeed_config=deepspeed_config)[0]
        _CHECKPOINTS[case] = (save_dir, evals)
    return _CHECKPOINTS[case]


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
