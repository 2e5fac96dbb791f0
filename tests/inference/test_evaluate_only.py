"""--skip-train (--eval-only) on saved checkpoints of real training runs: the loss it prints is the validation
loss training logged at that iteration (same data flags and layout, within 1e-6 relative), for a TP=2 and a
PP=2 checkpoint; and the combinations that cannot work are refused before any engine exists."""

import pytest

from megatron.config import ConfigError, resolve_config
from tests.distributed import run_on_ranks
from tests.inference.runs import CASES, ITERATIONS, evaluate_only, run_values, trained_checkpoint

RTOL = 1e-6


@pytest.mark.parametrize("case", ["gpt_tp2", "gpt_pp2"])
def test_skip_train_reports_the_logged_validation_loss(case, english_corpus, tmp_path_factory):
    save_dir, logged = trained_checkpoint(case, english_corpus, tmp_path_factory)
    family, overrides, deepspeed_config, _ = CASES[case]
    values = run_values(family, english_corpus, load=save_dir, skip_train=True, **overrides)
    evaluated, printed = run_on_ranks(2, evaluate_only, values=values, deepspeed_config=deepspeed_config)[0]
    assert list(evaluated) == [ITERATIONS] and ITERATIONS in logged
    got, want = evaluated[ITERATIONS], logged[ITERATIONS]
    assert abs(got - want) <= RTOL * abs(want), f"{case}: eval-only loss {got!r}, training logged {want!r}"
    line = next(line for line in printed if line.startswith("> evaluation only"))
    assert f"loss {got:.8f} | ppl" in line and f"iteration {ITERATIONS}" in line


def test_skip_train_scores_a_whole_corpus_as_validation_data(english_corpus, tmp_path_factory):
    """--split 0,1,0: no training split is needed; the loss is a real figure near the trained model's."""
    save_dir, logged = trained_checkpoint("gpt_tp2", english_corpus, tmp_path_factory)
    family, overrides, deepspeed_config, _ = CASES["gpt_tp2"]
    values = run_values(family, english_corpus, load=save_dir, skip_train=True, split="0,1,0", **overrides)
    evaluated, _ = run_on_ranks(2, evaluate_only, values=values, deepspeed_config=deepspeed_config)[0]
    assert 0.5 * logged[ITERATIONS] < evaluated[ITERATIONS] < 1.5 * logged[ITERATIONS], (evaluated, logged)


@pytest.mark.parametrize("extra, message", [
    (dict(), "--skip-train evaluates a checkpoint: add --load DIR"),
    (dict(load="x", save="y"), "--skip-train saves nothing"),
    (dict(load="x", eval_iters=0), "--eval-iters 0 has nothing to evaluate"),
])
def test_skip_train_refusals(extra, message, english_corpus):
    with pytest.raises(ConfigError, match=message):
        resolve_config(run_values("gpt", english_corpus, skip_train=True, **extra),
                       deepspeed_config={"zero_optimization": {"stage": 1}}, world_size=1)


def test_eval_only_alias_parses():
    from megatron.config import parse_config

    config = parse_config(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length",
                           "32", "--micro-batch-size", "1", "--train-iters", "1", "--lr", "1e-3", "--load", "ckpt",
                           "--eval-only"], world_size=1)
    assert config.training.skip_train
