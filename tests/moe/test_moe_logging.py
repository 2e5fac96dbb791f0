"""The MoE log: LM loss and aux loss apart, per-layer expert load (tokens per expert, dropped) in the log line,
the metrics file and TensorBoard, summed over data-parallel ranks (EP = 2, capacity factor 1.0 so some drop)."""

import json
import os

from tests.distributed import run_on_ranks
from tests.moe.test_moe_training import _moe_values

TOKENS_PER_STEP = 8 * 32  # global batch x sequence length


def _run(values):
    from megatron.config import resolve_config
    from megatron.core import comm
    from megatron.training.pretrain import pretrain

    lines = []
    config = resolve_config(values, deepspeed_config={"zero_optimization": {"stage": 1}},
                            world_size=comm.get_world_size())
    state = pretrain(config, printer=lines.append)
    return [r for r in state.history if "moe_aux_loss" in r], [line for line in lines if "aux loss" in line]


def test_log_line_metrics_file_and_tensorboard_carry_moe_figures(synthetic_corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = _moe_values("gpt", synthetic_corpus, expert_model_parallel_size=2, moe_expert_capacity_factor=1.0,
                         train_iters=4, log_interval=2, metrics_file=str(tmp_path / "metrics.jsonl"),
                         tensorboard_dir=str(tmp_path / "tb"))
    records, lines = run_on_ranks(2, _run, values=values)[0]
    assert len(records) == 2 and len(lines) == 2
    for record in records:
        assert 0 < record["moe_aux_loss"] < 1 and abs(record["lm_loss"] + record["moe_aux_loss"] - record["loss"]) < 1e-9
        for layer in ("moe0", "moe1"):
            kept, dropped = record[f"{layer}_tokens_per_expert"], record[f"{layer}_dropped"]
            assert len(kept) == 4 and sum(kept) + dropped == TOKENS_PER_STEP * 2  # top-2: two slots a token
            assert dropped > 0
    assert "lm loss" in lines[0] and "moe0 tokens/expert [" in lines[0] and "dropped" in lines[0]
    written = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [w["moe0_tokens_per_expert"] for w in written if w["kind"] == "train"] == \
        [r["moe0_tokens_per_expert"] for r in records]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train/moe_aux_loss" in tags and "train/lm_loss" in tags and "train/moe1_tokens_per_expert/3" in tags
