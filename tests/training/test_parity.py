"""The whole training job (config -> data -> model -> DeepSpeed engine -> loop) at different layouts.

Fixed seed and data, 10 steps, fp32, dropout off: the loss sequence of every layout must equal the
single-rank run within 1e-4 relative (bf16: 2e-2); activation checkpointing must not change a single bit.
"""

import pytest

from tests.training.corpus import VOCAB
from tests.training.whole_runs import train

STEPS = 10
RTOL = 1e-4
BF16_RTOL = 2e-2

FAMILIES = {
    "gpt": dict(model_family="gpt", num_layers=2, hidden_size=32, num_attention_heads=4),
    # GQA where heads, KV heads and TP interact: 8 query heads share 2 KV heads; at TP=2 each rank has 4 + 1.
    "llama": dict(model_family="llama", num_layers=2, hidden_size=32, num_attention_heads=8,
                  num_key_value_heads=2, ffn_hidden_size=64),
}

# name: (world size, flag overrides, DeepSpeed JSON)
LAYOUTS = {
    "tp2": (2, {"tensor_model_parallel_size": 2}, {"zero_optimization": {"stage": 0}}),
    "tp2_sequence_parallel": (2, {"tensor_model_parallel_size": 2, "sequence_parallel": True},
                              {"zero_optimization": {"stage": 1}}),
    "dp2_zero1": (2, {}, {"zero_optimization": {"stage": 1}}),
    "dp2_zero2": (2, {}, {"zero_optimization": {"stage": 2}}),
    "dp2_zero3": (2, {}, {"zero_optimization": {"stage": 3}}),
    "dp2_zero2_cpu_offload": (2, {}, {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}),
    "tp2_dp2_zero3": (4, {"tensor_model_parallel_size": 2}, {"zero_optimization": {"stage": 3}}),
}


def _values(family, corpus, **overrides):
    values = dict(FAMILIES[family], seq_length=32, max_position_embeddings=32, micro_batch_size=2,
                  global_batch_size=8, train_iters=STEPS, lr=1e-2, min_lr=1e-3, lr_warmup_iters=2,
                  lr_decay_style="cosine", clip_grad=1.0, weight_decay=0.01, hidden_dropout=0.0,
                  attention_dropout=0.0, seed=1234, log_interval=STEPS, eval_interval=5, eval_iters=1,
                  data_path=[corpus["prefix"]], data_cache_path=corpus["cache"], split="98,2,0",
                  tokenizer_type="NullTokenizer", vocab_size=VOCAB, num_workers=0)  # default padding: 128/256 rows
    values.update(overrides)
    return values


_BASELINES = {}


def baseline(family, corpus):
    if family not in _BASELINES:
        _BASELINES[family] = train(1, _values(family, corpus), {"zero_optimization": {"stage": 0}})
    return _BASELINES[family]


def assert_losses_close(actual, expected, rtol, what):
    assert len(actual) == len(expected) == STEPS, f"{what}: {len(actual)} vs {len(expected)} steps"
    for step, (a, e) in enumerate(zip(actual, expected)):
        assert abs(a - e) <= rtol * abs(e), f"{what}: step {step + 1} loss {a!r} vs single-rank {e!r}"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layout_matches_single_rank(family, layout, synthetic_corpus):
    world, overrides, deepspeed_config = LAYOUTS[layout]
    expected = baseline(family, synthetic_corpus)
    run = train(world, _values(family, synthetic_corpus, **overrides), deepspeed_config)
    assert_losses_close(run["losses"], expected["losses"], RTOL, f"{family} {layout}")
    assert len(run["evals"]) == len(expected["evals"]) == 2
    for a, e in zip(run["evals"], expected["evals"]):
        assert abs(a - e) <= RTOL * abs(e), f"{family} {layout}: validation loss {a!r} vs {e!r}"


def test_single_rank_loss_falls(synthetic_corpus):
    losses = baseline("gpt", synthetic_corpus)["losses"]
    assert losses[-1] < losses[0] - 0.3, f"loss did not fall: {losses}"


@pytest.mark.parametrize("granularity", ["full", "selective"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_activation_checkpointing_changes_nothing(family, granularity, synthetic_corpus):
    """With dropout on and TP=2: recomputation replays the per-TP-rank dropout masks bit for bit."""
    dropout = dict(hidden_dropout=0.1, attention_dropout=0.1, tensor_model_parallel_size=2)
    deepspeed_config = {"zero_optimization": {"stage": 1}}
    plain = train(2, _values(family, synthetic_corpus, **dropout), deepspeed_config)
    recomputed = train(2, _values(family, synthetic_corpus, recompute_granularity=granularity, **dropout),
                       deepspeed_config)
    assert recomputed == plain


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_stays_close_to_fp32(family, synthetic_corpus):
    expected_losses = baseline(family, synthetic_corpus)["losses"]
    losses = train(1, _values(family, synthetic_corpus),
                   {"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}})["losses"]
    assert_losses_close(losses, expected_losses, BF16_RTOL, f"{family} bf16")
