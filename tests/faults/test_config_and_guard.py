"""Refused at parse time: non-finite or impossible numbers; and the divergence rule of the training loop."""

import pytest

from megatron.config import ConfigError, parse_config
from megatron.training.loop import DivergenceGuard, TrainingDiverged

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "8", "--seq-length", "128",
        "--train-iters", "10", "--lr", "1e-4"]


@pytest.mark.parametrize("flags,fragment", [
    (["--lr", "nan"], "--lr nan is not a finite number"),
    (["--lr", "inf"], "--lr inf is not a finite number"),
    (["--min-lr", "inf"], "--min-lr inf is not a finite number"),
    (["--weight-decay", "nan"], "--weight-decay nan is not a finite number"),
    (["--clip-grad", "inf"], "--clip-grad inf is not a finite number"),
    (["--init-method-std", "-1"], "--init-method-std -1.0 must be >= 0"),
    (["--adam-eps=-inf"], "--adam-eps -inf is not a finite number"),
    (["--distributed-timeout-minutes", "0"], "--distributed-timeout-minutes 0.0 must be >= 0.05"),
    (["--max-skipped-steps", "0"], "--max-skipped-steps 0 must be >= 1"),
], ids=lambda value: value[0] if isinstance(value, list) else None)
def test_impossible_numbers_are_refused_at_parse_time(flags, fragment):
    arguments = list(BASE)
    if flags[0] == "--lr":
        arguments = arguments[:-2]
    with pytest.raises(ConfigError) as error:
        parse_config(arguments + flags, world_size=1)
    assert fragment in str(error.value)


def test_nan_lr_in_the_deepspeed_json_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"train_batch_size": 1, "optimizer": {"type": "AdamW", "params": {"lr": NaN}}}')
    with pytest.raises(ConfigError) as error:
        parse_config(BASE[:-2] + ["--deepspeed_config", str(path)], world_size=1)
    assert "nan" in str(error.value).lower()


def test_without_loss_scaling_the_first_non_finite_step_stops():
    guard = DivergenceGuard(max_skipped_steps=3, dynamic_loss_scale=False)
    guard.check(1, 2.5, 0.7, skipped=False)
    for loss, norm, skipped in ((float("nan"), 1.0, False), (2.0, float("inf"), False), (2.0, 1.0, True)):
        with pytest.raises(TrainingDiverged) as error:
            guard.check(7, loss, norm, skipped)
        assert "iteration 7" in str(error.value) and "at once" in str(error.value)


def test_with_dynamic_loss_scaling_consecutive_non_finite_losses_stop():
    guard = DivergenceGuard(max_skipped_steps=3, dynamic_loss_scale=True)
    guard.check(1, 2.0, float("inf"), skipped=True)  # an overflow while the scale is found: not a divergence
    guard.check(2, float("nan"), None, skipped=True)
    guard.check(3, float("nan"), None, skipped=True)
    guard.check(4, 2.0, 1.0, skipped=False)  # a good step resets the count
    guard.check(5, float("nan"), None, skipped=True)
    guard.check(6, float("nan"), None, skipped=True)
    with pytest.raises(TrainingDiverged) as error:
        guard.check(7, float("nan"), None, skipped=True)
    assert "iteration 7" in str(error.value) and "3 consecutive" in str(error.value)
