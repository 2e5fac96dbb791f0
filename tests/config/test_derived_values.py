"""Values the configuration derives, and the model-family presets with their overrides."""

import dataclasses
import re

import pytest

from megatron.config import ConfigError, ModelConfig, ParallelConfig, parse_config
from megatron.config.model import default_ffn_hidden_size
from megatron.core.vocab_padding import pad_vocab_size


def test_gpt_family_is_the_default(tiny_flags):
    model = parse_config(tiny_flags).model
    assert (model.model_family, model.position_embedding_type, model.normalization) == \
        ("gpt", "learned_absolute", "LayerNorm")
    assert not model.swiglu and model.add_bias_linear and not model.untie_embeddings_and_output_weights
    assert model.hidden_dropout == 0.1


def test_llama_family_preset(tiny_flags):
    model = parse_config(tiny_flags + ["--model-family", "llama"]).model
    assert (model.position_embedding_type, model.normalization) == ("rope", "RMSNorm")
    assert model.swiglu and not model.add_bias_linear and model.untie_embeddings_and_output_weights
    assert (model.attention_dropout, model.hidden_dropout) == (0.0, 0.0)
    assert model.ffn_hidden_size == 128  # Megatron's SwiGLU rule for hidden 64


def test_explicit_flags_override_the_preset(tiny_flags):
    flags = ["--model-family", "llama", "--no-swiglu", "--add-bias-linear", "--normalization", "LayerNorm",
             "--tie-embeddings-and-output-weights", "--position-embedding-type", "learned_absolute",
             "--hidden-dropout", "0.2"]
    model = parse_config(tiny_flags + flags).model
    assert not model.swiglu and model.add_bias_linear and not model.untie_embeddings_and_output_weights
    assert (model.normalization, model.position_embedding_type) == ("LayerNorm", "learned_absolute")
    assert (model.hidden_dropout, model.attention_dropout) == (0.2, 0.0)  # unset ones keep the preset
    assert model.ffn_hidden_size == 256  # no SwiGLU -> 4h


@pytest.mark.parametrize("hidden, swiglu, expected", [
    (64, False, 256), (64, True, 128), (4096, True, 10880), (4096, False, 16384), (16, True, None)])
def test_ffn_hidden_size_follows_megatron(hidden, swiglu, expected):
    # Megatron: int(4h * 2/3 / 64) * 64 with SwiGLU; Llama-7B's 11008 therefore needs an explicit flag.
    assert default_ffn_hidden_size(hidden, swiglu) == expected


def test_model_config_derives_its_own_defaults():
    model = ModelConfig(num_layers=2, hidden_size=96, num_attention_heads=6, seq_length=64)
    assert (model.kv_channels, model.num_key_value_heads, model.max_position_embeddings) == (16, 6, 64)
    assert model.ffn_hidden_size == 384
    explicit = ModelConfig(num_layers=2, hidden_size=100, num_attention_heads=8, kv_channels=16,
                           seq_length=64, max_position_embeddings=256, num_key_value_heads=2)
    assert (explicit.kv_channels, explicit.max_position_embeddings, explicit.num_key_value_heads) == (16, 256, 2)


def test_kv_channels_may_be_given_when_heads_do_not_divide_hidden(tiny_flags):
    flags = ["--hidden-size", "60", "--num-attention-heads", "8", "--kv-channels", "8"]
    assert parse_config(tiny_flags + flags).model.kv_channels == 8


@pytest.mark.parametrize("vocab, divisible_by, tp, padded", [
    (50257, 128, 1, 50304), (50257, 128, 2, 50432), (32000, 128, 4, 32256), (256, 128, 2, 256)])
def test_padded_vocab_size(vocab, divisible_by, tp, padded):
    assert pad_vocab_size(vocab, divisible_by, tp) == padded


def test_padded_vocab_waits_for_the_tokenizer(tiny_flags):
    config = parse_config(tiny_flags + ["--tensor-model-parallel-size", "2"], world_size=2)
    assert config.model.padded_vocab_size is None
    with_vocab = config.with_vocab(32001)
    assert (with_vocab.model.vocab_size, with_vocab.model.padded_vocab_size) == (32001, 32256)
    assert config.model.vocab_size is None  # the original is untouched
    assert with_vocab.with_vocab(32001) == with_vocab  # idempotent with the same tokenizer
    with pytest.raises(ConfigError, match="already holds a tokenizer vocabulary of 32001"):
        with_vocab.with_vocab(50257)


def test_null_tokenizer_vocabulary_includes_eod(tiny_flags):
    # --vocab-size counts NullTokenizer's text ids; the tokenizer reports one more (EOD), as in Megatron.
    flags = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "128", "--tensor-model-parallel-size", "2"]
    config = parse_config(tiny_flags + flags, world_size=2)
    assert (config.model.vocab_size, config.model.padded_vocab_size) == (128, None)
    with_vocab = config.with_vocab(129)
    assert (with_vocab.model.vocab_size, with_vocab.model.padded_vocab_size) == (129, 256)
    assert with_vocab.with_vocab(129) == with_vocab
    with pytest.raises(ConfigError, match=re.escape("NullTokenizer with --vocab-size 128 has 129 ids (EOD added), "
                                                    "but with_vocab() got 128")):
        config.with_vocab(128)


def test_with_vocab_refuses_a_contradicting_flag(tiny_flags):
    config = parse_config(tiny_flags + ["--vocab-size", "1000", "--tokenizer-type", "GPT2BPETokenizer"])
    with pytest.raises(ConfigError, match="--vocab-size 1000 contradicts the tokenizer's vocabulary of 50257"):
        config.with_vocab(50257)


def test_parallel_sizes_and_batch_derivation(tiny_flags):
    config = parse_config(tiny_flags + ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size",
                                        "2", "--micro-batch-size", "2", "--global-batch-size", "24"],
                          world_size=12)
    assert config.parallel.data_parallel_size == 3
    assert config.training.gradient_accumulation_steps == 4  # 24 / (2 * 3)


def test_global_batch_defaults_to_micro_times_data_parallel(tiny_flags):
    config = parse_config(tiny_flags + ["--micro-batch-size", "3"], world_size=4)
    assert (config.training.global_batch_size, config.training.gradient_accumulation_steps) == (12, 1)


def test_data_parallel_size_of_a_hand_built_parallel_config():
    assert ParallelConfig(world_size=8, tensor_model_parallel_size=2).data_parallel_size == 4
    assert ParallelConfig(world_size=6, tensor_model_parallel_size=4).data_parallel_size is None


@pytest.mark.parametrize("flags, world, schedule", [
    ([], 1, "1f1b"),
    (["--pipeline-model-parallel-size", "2"], 2, "deepspeed"),
    (["--pipeline-model-parallel-size", "2", "--zero-stage", "1"], 2, "deepspeed"),
    (["--pipeline-model-parallel-size", "2", "--zero-stage", "2"], 2, "1f1b"),
    (["--num-layers", "4", "--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1",
      "--global-batch-size", "2"], 2, "interleaved"),
    (["--pipeline-model-parallel-size", "2", "--pipeline-schedule", "1f1b"], 2, "1f1b"),
])
def test_pipeline_schedule_default(tiny_flags, flags, world, schedule):
    assert parse_config(tiny_flags + flags, world_size=world).parallel.pipeline_schedule == schedule


def test_lr_decay_iters_defaults_to_train_iters(tiny_flags):
    assert parse_config(tiny_flags).training.lr_decay_iters == 10
    assert parse_config(tiny_flags + ["--lr-decay-iters", "7"]).training.lr_decay_iters == 7


def test_warmup_fraction_becomes_steps_of_the_decay(tiny_flags):
    training = parse_config(tiny_flags + ["--lr-warmup-fraction", "0.25", "--lr-decay-iters", "8"]).training
    assert (training.warmup_iters, training.lr_warmup_iters) == (2, 0)


def test_output_locations(tiny_flags, tmp_path):
    named = parse_config(tiny_flags + ["--run-name", "tiny"]).logging
    assert (named.output_dir, named.metrics_file) == ("runs/tiny", "runs/tiny/metrics.jsonl")
    stamped = parse_config(tiny_flags).logging
    assert stamped.output_dir.startswith("runs/2") and stamped.metrics_file.endswith("metrics.jsonl")
    explicit = parse_config(tiny_flags + ["--output-dir", str(tmp_path)]).logging
    assert explicit.metrics_file == str(tmp_path / "metrics.jsonl")


def test_checkpoint_activations_is_full_recomputation(tiny_flags):
    assert parse_config(tiny_flags + ["--checkpoint-activations"]).recompute.recompute_granularity == "full"
    selective = parse_config(tiny_flags + ["--recompute-granularity", "selective"]).recompute
    assert not selective.checkpoint_activations


def test_configs_are_frozen(tiny_flags):
    config = parse_config(tiny_flags)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.hidden_size = 128
