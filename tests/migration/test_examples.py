"""examples_deepspeed/ recipes at a tiny size: every script's command line (captured instead of launched)
resolves through the configuration; the GPT-125M recipe also trains for real, 3 iterations on 2 ranks under the
`deepspeed` launcher, writing Megatron-DeepSpeed's TensorBoard tags and Megatron's tracker file.

The MoE recipe uses Megatron-DeepSpeed's --num-experts, which another feature adds; until this parser knows it the
test checks it fails with a message naming the flag. The long-sequence recipe's --ds-sequence-parallel-size is
known, but the recipe keeps attention dropout (and full recomputation), which context-parallel training refuses;
the test checks that refusal names the flag.
"""

import json
import math
import os
import random
import subprocess

import pytest

from megatron.config import ConfigError, parse_config
from megatron.config.cli import build_parser
from tests.training.corpus import VOCAB

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_GPT = dict(NUM_LAYERS="2", HIDDEN_SIZE="64", NUM_HEADS="4", SEQ_LEN="64", GLOBAL_BATCH="8", MICRO_BATCH="2",
                TRAIN_TOKENS=str(64 * 8 * 10), LR_WARMUP_TOKENS="1024")
RECIPES = {
    "pretrain_gpt_125M.sh": ([], TINY_GPT, None),
    "pretrain_gpt_1.3B.sh": ([], dict(TINY_GPT, TP="2"), None),
    "pretrain_llama2_7B.sh": ([], dict(HIDDEN_SIZE="64", FFN_HIDDEN_SIZE="176", NUM_LAYERS="2", NUM_HEADS="4",
                                       NUM_KV_HEADS="2", SEQ_LENGTH="64", MICRO_BATCH_SIZE="2", GLOBAL_BATCH_SIZE="8",
                                       TRAIN_STEPS="10", LR_WARMUP_STEPS="2"), None),
    "universal_checkpointing.sh train": (["train"], dict(NUM_LAYERS="2", HIDDEN_SIZE="64", NUM_HEADS="4",
                                                         SEQ_LEN="64", GLOBAL_BATCH="8", MICRO_BATCH="2",
                                                         SAVE_AT="3", TRAIN_ITERS="6", LR_WARMUP_ITERS="1"), None),
    "universal_checkpointing.sh resume": (["resume"], dict(NUM_LAYERS="2", HIDDEN_SIZE="64", NUM_HEADS="4",
                                                           SEQ_LEN="64", GLOBAL_BATCH="8", MICRO_BATCH="2",
                                                           SAVE_AT="3", TRAIN_ITERS="6", LR_WARMUP_ITERS="1"), None),
    "pretrain_gpt_moe.sh": ([], dict(SEQ_LEN="64", NUM_LAYERS="2", HIDDEN_SIZE="64", NUM_ATTN_HEADS="4",
                                     GLOBAL_BATCH_SIZE="8", BATCH_SIZE="2", TRAIN_TOKENS=str(64 * 8 * 10),
                                     WARMUP_TOKENS="1024", NUM_EXPERTS="2", EP_PARALLEL_SIZE="2"), "--num-experts"),
    "pretrain_gpt_long_seq.sh": ([], dict(SEQ_LEN="64", NUM_LAYERS="2", HIDDEN_SIZE="64", NUM_ATTN_HEADS="4",
                                          GLOBAL_BATCH="2", MICRO_BATCH="1", SP_SIZE="2", TRAIN_TOKENS="1280",
                                          LR_WARMUP_TOKENS="128"), "--ds-sequence-parallel-size"),
}


def _capture(script_and_args, env, tmp_path):
    capture = str(tmp_path / "argv.json")
    env = dict(os.environ, **env, NUM_GPUS="2", OUTPUT_DIR=str(tmp_path / "run"), CAPTURE_FILE=capture,
               LAUNCHER=f"python {os.path.join(REPO, 'tests', 'migration', 'capture_argv.py')}")
    script, *args = script_and_args
    result = subprocess.run(["bash", os.path.join(REPO, "examples_deepspeed", script), *args], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    with open(capture) as handle:
        argv = json.load(handle)
    assert argv[0] == "pretrain_gpt_ds.py"
    return argv[1:]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_command_line_resolves(name, tmp_path):
    args, env, needs_flag = RECIPES[name]
    argv = _capture([name.split()[0], *args], env, tmp_path)
    if needs_flag is not None and needs_flag not in build_parser()._option_string_actions:
        with pytest.raises(ConfigError, match=needs_flag):
            parse_config(argv, world_size=2)
        return
    if needs_flag == "--ds-sequence-parallel-size":
        # Known flag; the recipe's attention dropout is refused (Ulysses draws no dropout mask on the probabilities).
        with pytest.raises(ConfigError, match=r"--ds-sequence-parallel-size 2 with --attention-dropout"):
            parse_config(argv, world_size=2)
        return
    config = parse_config(argv, world_size=2)
    assert config.model.num_layers == 2
    assert os.path.isfile(config.deepspeed_config_path)


def test_gpt_125M_recipe_trains_and_writes_megatron_deepspeed_tags(migration_corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "run"
    env = dict(os.environ, NUM_LAYERS="2", HIDDEN_SIZE="32", NUM_HEADS="4", SEQ_LEN="32", GLOBAL_BATCH="8",
               MICRO_BATCH="2", TRAIN_TOKENS=str(3 * 8 * 32), LR_WARMUP_TOKENS="256", PRECISION="fp32",
               LOG_INTERVAL="1", EVAL_INTERVAL="2", EVAL_ITERS="1", SAVE_INTERVAL="2", OUTPUT_DIR=str(output),
               NUM_GPUS="2", MASTER_PORT=str(random.randint(20000, 40000)), DS_ACCELERATOR="cpu",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(["bash", os.path.join(REPO, "examples_deepspeed", "pretrain_gpt_125M.sh"),
                             "--data-path", migration_corpus["prefix"], "--data-cache-path", migration_corpus["cache"],
                             "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "flag --no-async-tensor-model-parallel-allreduce has no effect here because" in result.stdout
    assert (output / "checkpoint" / "latest_checkpointed_iteration.txt").read_text() == "3"

    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()

    def scalars(tag):
        return [(event.step, event.value) for event in events.Scalars(tag)]

    losses = scalars("lm-loss-training/lm loss")
    assert [step for step, _ in losses] == [1, 2, 3]
    assert [step for step, _ in scalars("lm-loss-training/lm loss vs samples")] == [8, 16, 24]
    assert [step for step, _ in scalars("lm-loss-training/lm loss vs tokens")] == [256, 512, 768]
    assert [value for _, value in scalars("batch-size/batch-size")] == [8, 8, 8]
    lrs = [value for _, value in scalars("learning-rate/learning-rate")]
    expected = [6e-4, 1e-6 + 0.5 * (1 + math.cos(math.pi * 0.5)) * (6e-4 - 1e-6), 1e-6]
    assert all(abs(got - want) <= 1e-9 for got, want in zip(lrs, expected, strict=True)), lrs
    assert len(scalars("grad-norm/grad-norm vs tokens")) == 3
    assert [step for step, _ in scalars("lm-loss-validation/lm loss validation")] == [2]
    assert [step for step, _ in scalars("lm-loss-validation/lm loss validation vs samples")] == [16]
    assert len(scalars("lm-loss-validation/lm loss validation ppl")) == 1
    assert "train/loss" in events.Tags()["scalars"]  # --tensorboard-tags both: ours as well
    metrics = [json.loads(line) for line in open(output / "metrics.jsonl")]
    ours = [record["loss"] for record in metrics if record["kind"] == "train"]
    assert all(abs(a - b) <= 1e-6 for a, (_, b) in zip(ours, losses, strict=True))
