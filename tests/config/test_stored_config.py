"""to_dict / from_dict: the configuration stored inside checkpoints."""

import json

import pytest

from megatron.config import ConfigError, RunConfig, parse_config


@pytest.fixture
def rich_config(tiny_flags, ds_json):
    ds = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}, "bf16": {"enabled": True},
          "train_batch_size": 8, "steps_per_print": 1000}
    flags = ["--model-family", "llama", "--num-key-value-heads", "2", "--tensor-model-parallel-size", "2",
             "--data-path", "0.5", "a", "0.5", "b", "--checkpoint-activations", "--run-name", "r",
             "--vocab-size", "1000", "--tokenizer-type", "NullTokenizer", "--deepspeed_config", ds_json(ds)]
    return parse_config(tiny_flags + flags, world_size=4).with_vocab(1001)  # NullTokenizer adds EOD


def test_round_trip_is_exact(rich_config):
    stored = json.loads(json.dumps(rich_config.to_dict()))  # as it would come back from a checkpoint file
    restored = RunConfig.from_dict(stored)
    assert restored == rich_config
    assert restored.data.data_path == ("0.5", "a", "0.5", "b")
    assert restored.model.padded_vocab_size == 1024 and restored.logging.output_dir == "runs/r"


def test_stored_form_is_plain_json(rich_config):
    stored = rich_config.to_dict()
    assert stored["format_version"] == 1
    assert stored["data"]["data_path"] == ["0.5", "a", "0.5", "b"]
    assert stored["deepspeed_config"]["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    stored["deepspeed_config"]["steps_per_print"] = 1  # the stored copy is independent of the config
    assert rich_config.deepspeed_config["steps_per_print"] == 1000


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=0), "format_version=0; this code reads 1"),
    (lambda d: d.update(optimizer={}), "unknown sections ['optimizer']"),
    (lambda d: d["model"].update(num_expert=4), "stored ModelConfig has unknown fields ['num_expert']"),
    (lambda d: d["deepspeed_config"].update(train_batch_size=16),
     "deepspeed_config train_batch_size=16 disagrees with the resolved value 8"),
    (lambda d: d["deepspeed_config"].pop("bf16"), "deepspeed_config bf16.enabled=False disagrees"),
])
def test_tampered_or_foreign_configs_are_refused(rich_config, edit, message):
    stored = rich_config.to_dict()
    edit(stored)
    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict(stored)
    assert message in str(error.value)
