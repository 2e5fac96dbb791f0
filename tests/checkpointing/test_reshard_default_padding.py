"""Resharding at the default vocabulary padding: a checkpoint resumed with --universal-checkpoint in another
layout continues the uninterrupted run within 1e-4, although the padded table has another size there.

600 token ids (NullTokenizer 599 + EOD) pad to 640 rows at TP=1, 768 at TP=2 and 1024 at TP=4, and padding ids
are not classes (their logits are -inf), so the resharded model computes the same function. Llama (untied head:
two vocabulary tables), fp32, dropout off, the whole job through pretrain: save at iteration 3 (--exit-interval),
resume elsewhere to iteration 6.
"""

import pytest

from tests.checkpointing.test_pretrain_resume import _pretrain
from tests.distributed import run_on_ranks
from tests.training.test_layout_invariance import PADDED_VOCAB, _values

SAVE_AT, TOTAL = 3, 6
RTOL = 1e-4
ZERO = {stage: {"zero_optimization": {"stage": stage}} for stage in (1, 3)}

# name: ((world, flags, JSON) of the saving run, (world, flags, JSON) of the resumed run)
CASES = {
    "tp2_to_tp1": ((2, {"tensor_model_parallel_size": 2}, ZERO[1]), (2, {}, ZERO[1])),
    "tp1_to_tp4": ((1, {}, ZERO[1]), (4, {"tensor_model_parallel_size": 4}, ZERO[1])),
    "pp2_to_pp1": ((2, {"pipeline_model_parallel_size": 2, "pipeline_schedule": "1f1b"}, ZERO[1]), (1, {}, ZERO[1])),
    "zero1_to_zero3": ((2, {}, ZERO[1]), (2, {}, ZERO[3])),
}


def _run(world, flags, deepspeed_config, corpus, **extra):
    values = _values("llama", 1234, corpus, train_iters=TOTAL, lr_decay_iters=TOTAL, **flags, **extra)
    return run_on_ranks(world, _pretrain, values=values, deepspeed_config=deepspeed_config)[0]


@pytest.mark.parametrize("case", list(CASES))
def test_universal_resume_into_another_layout_continues(case, tmp_path):
    from tests.training.corpus import write_synthetic_corpus

    corpus = {"prefix": write_synthetic_corpus(str(tmp_path / "text_document"), vocab=PADDED_VOCAB),
              "cache": str(tmp_path / "cache")}
    save_dir = str(tmp_path / "checkpoints")
    source, target = CASES[case]
    _, uninterrupted = _run(*source, corpus)
    iteration, first = _run(*source, corpus, save=save_dir, exit_interval=SAVE_AT)
    assert (iteration, first) == (SAVE_AT, uninterrupted[:SAVE_AT])
    iteration, resumed = _run(*target, corpus, load=save_dir, universal_checkpoint=True)
    assert iteration == TOTAL
    for step, (got, want) in enumerate(zip(resumed, uninterrupted[SAVE_AT:], strict=True), start=SAVE_AT + 1):
        assert abs(got - want) <= RTOL * abs(want), f"{case}: iteration {step} loss {got!r} vs uninterrupted {want!r}"
