"""Every JSON in deepspeed_configs/, resolved with tiny flags, initialises a DeepSpeed engine and trains.

All configs run in ONE subprocess (initialize_each_deepspeed_config.py: gloo, world size 1), so the
process group and DeepSpeed's module globals never touch the other tests. The first run on a machine also
JIT-builds DeepSpeedCPUAdam for the offload configs (about 45-85 s on 2 cores; cached afterwards).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from megatron.config import resolve_config

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG_NAMES = sorted(p.name for p in (REPO / "deepspeed_configs").glob("*.json"))
ZERO_CONFIGS = ["zero0.json", "zero1.json", "zero2.json", "zero3.json"]
OFFLOAD_CONFIGS = ["zero2_offload.json", "zero3_offload.json"]


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    completed = subprocess.run([sys.executable, str(pathlib.Path(__file__).with_name(
        "initialize_each_deepspeed_config.py"))], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    lines = [line[len("RESULT "):] for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {r["name"]: r for r in map(json.loads, lines)}


def test_the_expected_configs_exist():
    assert set(CONFIG_NAMES) >= set(ZERO_CONFIGS + OFFLOAD_CONFIGS) | {"bf16_zero1.json", "fp16_zero1.json"}


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_initialises_and_trains(results, name):
    result = results[name]
    if name.startswith("fp16") and not result["fp16_supported"]:
        # This CPU has no fp16 kernels; DeepSpeed refuses at initialize, which is the documented outcome.
        assert result["error"] == "ValueError: Type fp16 is not supported on your device."
        return
    assert result["ok"], result.get("traceback")
    assert result["loss_after"] < result["loss_before"]


def test_zero_stages_and_offload_train_alike_in_fp32(results):
    # Same seed, same data: partitioning must not change the numbers. Offload runs DeepSpeedCPUAdam, a
    # different Adam kernel from torch's AdamW, so it agrees to a looser tolerance (measured 3.5e-6).
    reference = results["zero0.json"]["loss_after"]
    for name in ZERO_CONFIGS:
        assert results[name]["loss_after"] == pytest.approx(reference, rel=1e-6), name
    for name in OFFLOAD_CONFIGS:
        assert results[name]["loss_after"] == pytest.approx(reference, rel=1e-4), name
    assert results["zero2_offload.json"]["loss_after"] == pytest.approx(
        results["zero3_offload.json"]["loss_after"], rel=1e-6)


def test_bf16_tracks_fp32(results):
    assert results["bf16_zero1.json"]["loss_after"] == pytest.approx(results["zero0.json"]["loss_after"], rel=2e-2)


def test_json_optimizer_config_lets_deepspeed_build_the_optimizer(results):
    assert results["zero1_deepspeed_optimizer.json"]["ds_builds_optimizer"]
    assert not results["zero1.json"]["ds_builds_optimizer"]


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_configs_hold_no_batch_sizes_unless_demonstrating_them(name):
    ds = json.loads((REPO / "deepspeed_configs" / name).read_text())
    has_batch = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"} & set(ds)
    assert not has_batch or name == "zero1_deepspeed_optimizer.json"
    values = dict(num_layers=2, hidden_size=16, num_attention_heads=2, seq_length=8, train_iters=4,
                  micro_batch_size=2)
    if "optimizer" not in ds:
        values["lr"] = 1e-3
    config = resolve_config(values, deepspeed_config=str(REPO / "deepspeed_configs" / name), world_size=2)
    # With no batch keys the flags decide: micro 2 x DP 2 (x 2 accumulation for the demonstration file).
    assert config.deepspeed_config["train_micro_batch_size_per_gpu"] == 2
