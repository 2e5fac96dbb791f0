"""pretrain_gpt_ds.py end to end under the real launchers: `deepspeed` and `torchrun`, 2 processes each."""

import json
import os
import random
import subprocess
import sys

import pytest

from tests.training.corpus import VOCAB

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRIC_KEYS = {"iteration", "loss", "lr", "grad_norm", "loss_scale", "skipped_steps", "tokens_per_second",
               "tflops_per_device", "mfu", "seconds_per_iteration"}


def _flags(corpus, output_dir):
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--max-position-embeddings", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
            "--train-iters", "6", "--lr", "3e-3", "--lr-warmup-iters", "1", "--log-interval", "2",
            "--eval-interval", "3", "--eval-iters", "1", "--tensor-model-parallel-size", "2",
            "--data-path", corpus["prefix"], "--data-cache-path", corpus["cache"], "--split", "98,2,0",
            "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--output-dir", output_dir,
            "--tensorboard-dir", os.path.join(output_dir, "tb"),
            "--deepspeed", "--deepspeed_config", os.path.join(REPO, "deepspeed_configs", "zero1.json")]


def _run(command, output_dir):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    records = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.jsonl"))]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == [2, 4, 6]
    assert all(METRIC_KEYS <= set(r) for r in train), train[0].keys()
    assert len([r for r in records if r["kind"] == "eval"]) == 2
    assert "iteration      2 | loss" in result.stdout and "tokens/s" in result.stdout
    assert os.listdir(os.path.join(output_dir, "tb")), "no TensorBoard events written"
    return result


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_pretrain_script_under_launcher(launcher, synthetic_corpus, tmp_path):
    output_dir = str(tmp_path / launcher)
    if launcher == "deepspeed":
        command = ["deepspeed", "--num_gpus", "2", "--master_port", str(random.randint(20000, 40000)),
                   "pretrain_gpt_ds.py"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(random.randint(20000, 40000)), "pretrain_gpt_ds.py"]
    _run(command + _flags(synthetic_corpus, output_dir), output_dir)
