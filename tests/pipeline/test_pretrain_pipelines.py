"""PP > 1 end to end: command-line flags -> parse_config -> pretrain (data, build_engine, train loop with
evaluation), for every schedule, on a synthetic corpus.

Pipeline stages draw their weights from per-stage seeds (seed + 100 * pp_rank, as Megatron), so a pipeline's
model is not the single-rank model; the DeepSpeed schedule and 1F1B place the same layers on the same
stages and therefore start from the same weights: their whole runs (ZeRO-1 vs ZeRO-1 and ZeRO-3) must agree
within 1e-4. The interleaved schedule places layers differently; it must train (loss falls) and evaluate.
"""

import json
import os

import pytest

from tests.distributed import run_on_ranks
from tests.training.corpus import VOCAB

STEPS = 6


def _argv(corpus, schedule, zero_stage, *extra):
    path = os.path.join(corpus["directory"], f"ds_zero{zero_stage}.json")
    with open(path, "w") as handle:
        json.dump({"zero_optimization": {"stage": zero_stage}}, handle)
    return ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--max-position-embeddings", "32", "--micro-batch-size", "2", "--global-batch-size", "8",
            "--train-iters", str(STEPS), "--lr", "1e-2", "--min-lr", "1e-3", "--lr-warmup-iters", "2",
            "--lr-decay-style", "cosine", "--clip-grad", "1.0", "--hidden-dropout", "0.0",
            "--attention-dropout", "0.0", "--log-interval", str(STEPS), "--eval-interval", "3",
            "--eval-iters", "1", "--data-path", corpus["prefix"], "--data-cache-path", corpus["cache"],
            "--split", "98,2,0", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
            "--num-workers", "0", "--make-vocab-size-divisible-by", "64",
            "--pipeline-model-parallel-size", "2", "--pipeline-schedule", schedule,
            "--deepspeed", "--deepspeed_config", path, *extra]


def _pretrain(argv):
    from megatron.config import parse_config
    from megatron.core import comm
    from megatron.training.pretrain import pretrain

    # pretrain_gpt_ds.main without joining/leaving the world, which the rank pool owns.
    state = pretrain(parse_config(argv, world_size=comm.get_world_size()), printer=lambda message: None)
    return state.losses, [record["eval_loss"] for record in state.history if "eval_loss" in record]


def _run(argv):
    results = run_on_ranks(2, _pretrain, argv=argv)
    assert all(result == results[0] for result in results), f"ranks disagree: {results}"
    losses, evals = results[0]
    assert len(losses) == STEPS and len(evals) == 2
    return losses, evals


def _assert_close(actual, expected, what):
    for a, e in zip(actual, expected):
        assert abs(a - e) <= 1e-4 * abs(e), f"{what}: {actual} vs {expected}"


def test_deepspeed_and_1f1b_schedules_train_the_same_model(pipeline_corpus):
    deepspeed_losses, deepspeed_evals = _run(_argv(pipeline_corpus, "deepspeed", 1))
    assert deepspeed_losses[-1] < deepspeed_losses[0] - 0.1, f"loss did not fall: {deepspeed_losses}"
    for zero_stage in (1, 3):
        losses, evals = _run(_argv(pipeline_corpus, "1f1b", zero_stage))
        _assert_close(losses, deepspeed_losses, f"1f1b ZeRO-{zero_stage} training loss")
        _assert_close(evals, deepspeed_evals, f"1f1b ZeRO-{zero_stage} validation loss")


@pytest.mark.parametrize("zero_stage", [1, 2])
def test_interleaved_schedule_trains_and_evaluates(pipeline_corpus, zero_stage):
    losses, evals = _run(_argv(pipeline_corpus, "interleaved", zero_stage, "--num-layers-per-virtual-pipeline-stage",
                               "1"))
    assert losses[-1] < losses[0] - 0.1, f"loss did not fall: {losses}"
    assert all(loss == loss and loss < 10 for loss in losses + evals), (losses, evals)
