"""Rank-side helpers: real tiny training runs that leave checkpoints, and generation from them."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_tool(relative_path):
    """A script under tools/, imported from its file (tools/ is a folder of scripts, not a package)."""
    path = os.path.join(REPO, relative_path)
    spec = importlib.util.spec_from_file_location("tool_" + os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODELS = {
    "gpt": dict(model_family="gpt", num_layers=2, hidden_size=32, num_attention_heads=4),
    # 8 query heads share 2 KV heads: at TP=2 each rank holds 4 + 1.
    "llama": dict(model_family="llama", num_layers=2, hidden_size=32, num_attention_heads=8, num_key_value_heads=2,
                  ffn_hidden_size=64),
}
ITERATIONS = 8

CASES = {
    # name: (family, flag overrides, DeepSpeed JSON, world sizes to generate at); trained on 2 ranks
    "gpt_tp2": ("gpt", {"tensor_model_parallel_size": 2}, {"zero_optimization": {"stage": 1}}, (2, 1)),
    "llama_gqa_tp2": ("llama", {"tensor_model_parallel_size": 2}, {"zero_optimization": {"stage": 1}}, (2, 1)),
    "gpt_pp2": ("gpt", {"pipeline_model_parallel_size": 2}, {"zero_optimization": {"stage": 1}}, (1,)),
    # The other pipeline form (Megatron's 1F1B schedule, ZeRO-2), generated at TP=2 from a PP=2 checkpoint.
    "llama_pp2_1f1b_zero2": ("llama", {"pipeline_model_parallel_size": 2, "pipeline_schedule": "1f1b"},
                             {"zero_optimization": {"stage": 2}}, (2,)),
    "gpt_tp2_sequence_parallel_zero3": ("gpt", {"tensor_model_parallel_size": 2, "sequence_parallel": True},
                                        {"zero_optimization": {"stage": 3}}, (1,)),
}

_CHECKPOINTS = {}


def trained_checkpoint(case, corpus, tmp_path_factory):
    """(save dir, validation losses by iteration) of one real 2-rank training run per case, made once per
    pytest session (the generation and evaluation tests share them)."""
    from tests.distributed import run_on_ranks

    if case not in _CHECKPOINTS:
        family, overrides, deepspeed_config, _ = CASES[case]
        save_dir = str(tmp_path_factory.mktemp(f"ckpt-{case}"))
        evals = run_on_ranks(2, train_and_save, values=run_values(family, corpus, save=save_dir, **overrides),
                             deepspeed_config=deepspeed_config)[0]
        _CHECKPOINTS[case] = (save_dir, evals)
    return _CHECKPOINTS[case]


def run_values(family, corpus, **overrides):
    values = dict(MODELS[family], seq_length=32, max_position_embeddings=64, micro_batch_size=2,
                  global_batch_size=8, train_iters=ITERATIONS, lr=1e-2, min_lr=1e-3, lr_warmup_iters=2,
                  lr_decay_style="cosine", clip_grad=1.0, weight_decay=0.01, hidden_dropout=0.0,
                  attention_dropout=0.0, seed=1234, log_interval=100, eval_interval=ITERATIONS, eval_iters=2,
                  data_path=[corpus["prefix"]], data_cache_path=corpus["cache"], split="90,10,0",
                  tokenizer_type="SentencePieceTokenizer", tokenizer_model=corpus["tokenizer_model"],
                  num_workers=0)  # default vocabulary padding (128 rows per TP rank)
    values.update(overrides)
    return values


def train_and_save(values, deepspeed_config):
    """pretrain() with --save; returns the validation losses it logged, by iteration."""
    from megatron.config import resolve_config
    from megatron.core import comm
    from megatron.training.pretrain import pretrain

    config = resolve_config(values, deepspeed_config=deepspeed_config, world_size=comm.get_world_size())
    state = pretrain(config, printer=lambda message: None)
    return {record["iteration"]: record["eval_loss"] for record in state.history if "eval_loss" in record}


def generate_checks(load_dir, prompts, max_new_tokens):
    """On a world of any size (TP = world): greedy tokens of the batch and of each prompt alone, and the largest
    difference between the cached logits and a full recomputation at every step."""
    from megatron.core import comm
    from megatron.core import parallel_state as ps
    from megatron.inference import generate_ids, load_model_for_inference, recomputed_logits

    ps.initialize_model_parallel(tensor_model_parallel_size=comm.get_world_size())
    loaded = load_model_for_inference(load_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts_ids = [tokenizer.tokenize(prompt) for prompt in prompts]
    batched = generate_ids(model, prompts_ids, max_new_tokens, eod=tokenizer.eod, keep_logits=True,
                           pad_id=tokenizer.pad)
    alone = [generate_ids(model, [ids], max_new_tokens, eod=tokenizer.eod, pad_id=tokenizer.pad).token_ids[0]
             for ids in prompts_ids]
    worst = 0.0
    for row, ids in enumerate(prompts_ids):
        generated = batched.token_ids[row]
        for step in range(len(generated)):
            reference = recomputed_logits(model, list(ids) + generated[:step])
            worst = max(worst, (batched.step_logits[step][row] - reference).abs().max().item())
    ps.destroy_model_parallel()
    return {"prompts_ids": prompts_ids, "batched": batched.token_ids, "alone": alone, "max_logit_error": worst,
            "vocab_size": model.vocab_size}


def evaluate_only(values, deepspeed_config):
    """pretrain() with --skip-train: (its recorded validation losses by iteration, the lines it printed)."""
    from megatron.config import resolve_config
    from megatron.core import comm
    from megatron.training.pretrain import pretrain

    printed = []
    config = resolve_config(values, deepspeed_config=deepspeed_config, world_size=comm.get_world_size())
    state = pretrain(config, printer=printed.append)
    return ({record["iteration"]: record["eval_loss"] for record in state.history if "eval_loss" in record},
            printed)


def stop_and_dtype_checks(load_dir, prompt, max_new_tokens):
    """Greedy text, the same cut by a stop string taken from its middle, and bf16 generation from the same
    checkpoint (its ids, and its largest cache-vs-recompute logit difference)."""
    from megatron.core import comm
    from megatron.core import parallel_state as ps
    from megatron.inference import (SamplingParams, generate_ids, generate_text, load_model_for_inference,
                                    recomputed_logits)

    ps.initialize_model_parallel(tensor_model_parallel_size=comm.get_world_size())
    loaded = load_model_for_inference(load_dir)
    full = generate_text(loaded.model, loaded.tokenizer, [prompt], max_new_tokens, stop_at_eod=False)[0]
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 3]
    cut = generate_text(loaded.model, loaded.tokenizer, [prompt], max_new_tokens, stop=[stop], stop_at_eod=False)[0]
    sampled = generate_ids(loaded.model, [loaded.tokenizer.tokenize(prompt)], 64 - 10,
                           SamplingParams(greedy=False, temperature=5.0, seed=1), pad_id=loaded.tokenizer.pad)
    bf16 = load_model_for_inference(load_dir, "bf16")
    ids = bf16.tokenizer.tokenize(prompt)
    generated = generate_ids(bf16.model, [ids], max_new_tokens, keep_logits=True, pad_id=bf16.tokenizer.pad)
    worst = max((generated.step_logits[step][0] - recomputed_logits(bf16.model, ids + generated.token_ids[0][:step]))
                .abs().max().item() for step in range(len(generated.token_ids[0])))
    ps.destroy_model_parallel()
    return {"full": full.as_dict(), "stop": stop, "cut": cut.as_dict(), "sampled": sampled.token_ids[0],
            "vocab_size": loaded.model.vocab_size, "padded_vocab_size": loaded.run_config.model.padded_vocab_size,
            "bf16_ids": generated.token_ids[0], "bf16_dtype": str(next(bf16.model.parameters()).dtype),
            "bf16_logit_error": worst}
