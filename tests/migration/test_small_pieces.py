"""The smaller migration pieces: --use-checkpoint-args, --use-checkpoint-opt_param-scheduler,
--distributed-backend mapping, the LR schedule counted in samples/tokens."""

import json
import math

import pytest
import torch

from megatron.config import ConfigError, parse_config

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
        "--micro-batch-size", "1", "--lr", "1e-3", "--train-iters", "10"]


def _fake_checkpoint(tmp_path, config):
    folder = tmp_path / "ckpt" / "global_step5"
    folder.mkdir(parents=True)
    (tmp_path / "ckpt" / "latest").write_text("global_step5")
    (folder / "checkpoint_manifest.json").write_text(json.dumps({"config": config.to_dict()}))
    return str(tmp_path / "ckpt")


def test_use_checkpoint_args_takes_the_architecture_from_the_checkpoint(tmp_path):
    saved = parse_config(["--model-family", "llama", "--num-layers", "3", "--hidden-size", "96",
                          "--num-attention-heads", "6", "--num-key-value-heads", "2", "--ffn-hidden-size", "160",
                          "--seq-length", "32", "--lr", "1e-3", "--train-iters", "10",
                          "--tokenizer-type", "NullTokenizer", "--vocab-size", "100"], world_size=1)
    load = _fake_checkpoint(tmp_path, saved)
    config = parse_config(["--load", load, "--use-checkpoint-args", "--lr", "1e-4", "--train-iters", "20"],
                          world_size=1)
    assert (config.model.num_layers, config.model.hidden_size, config.model.num_key_value_heads,
            config.model.normalization, config.data.tokenizer_type) == (3, 96, 2, "RMSNorm", "NullTokenizer")
    assert any("--use-checkpoint-args: took" in note for note in config.notes)
    with pytest.raises(ConfigError, match="--num-layers 4 contradicts the checkpoint's 3"):
        parse_config(["--load", load, "--use-checkpoint-args", "--num-layers", "4", "--lr", "1e-4",
                      "--train-iters", "20"], world_size=1)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        parse_config(BASE + ["--load", str(tmp_path / "empty"), "--use-checkpoint-args"], world_size=1)


def _schedule(**kwargs):
    from megatron.training.lr_schedule import WarmupDecayLR

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    return WarmupDecayLR(optimizer, **kwargs)


def test_schedule_in_tokens_follows_megatron_deepspeed():
    """Warmup over 1000 tokens, cosine decay to 10000 tokens; 8 samples x 64 tokens = 512 tokens a step."""
    schedule = _schedule(max_lr=1.0, min_lr=0.1, warmup_steps=1000, decay_steps=10000, decay_style="cosine",
                         warmup_unit="tokens", decay_unit="tokens", samples_per_step=8, tokens_per_sample=64)
    lrs = []
    for _ in range(25):
        schedule.step()
        lrs.append(schedule.get_lr())
    assert lrs[0] == pytest.approx(512 / 1000)
    tokens = 5 * 512
    assert lrs[4] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * (tokens - 1000) / 9000)))
    assert lrs[-1] == 0.1


def test_schedule_shape_from_checkpoint_only_when_asked():
    state = _schedule(max_lr=1.0, min_lr=0.0, warmup_steps=2, decay_steps=10, decay_style="linear").state_dict()
    state["num_steps"] = 6
    flags = _schedule(max_lr=0.5, min_lr=0.0, warmup_steps=2, decay_steps=20, decay_style="linear")
    flags.load_state_dict(state)
    assert flags.get_lr() == pytest.approx(0.5 * (1 - 4 / 18))  # this run's shape, the checkpoint's position
    kept = _schedule(max_lr=0.5, min_lr=0.0, warmup_steps=2, decay_steps=20, decay_style="linear",
                     use_checkpoint_shape=True)
    kept.load_state_dict(state)
    assert kept.get_lr() == pytest.approx(1.0 * (1 - 4 / 8))  # the checkpoint's shape


def test_distributed_backend_nccl_becomes_the_cpu_backend_with_a_note():
    from megatron.core import comm
    from megatron.training.backend import choose_backend

    default = comm.default_backend()
    assert choose_backend(None) == (default, None)
    backend, note = choose_backend("nccl")
    if not torch.cuda.is_available():
        assert backend == default and "--distributed-backend nccl cannot run on this machine" in note
    assert choose_backend("gloo") == ("gloo", None)
