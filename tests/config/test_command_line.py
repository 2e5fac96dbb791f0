"""The generated parser: Megatron(-DeepSpeed) spellings, aliases, and what counts as explicitly given."""

import pathlib

import pytest

from megatron.config import ConfigError, parse_config
from megatron.config.cli import build_parser, parse_command_line

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_megatron_deepspeed_example_script_flags(ds_json):
    path = ds_json({"zero_optimization": {"stage": 1}})
    argv = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 128 "
            "--max-position-embeddings 128 --micro-batch-size 2 --global-batch-size 8 --lr 1e-4 "
            "--train-iters 10 --tensor-model-parallel-size 2 --deepspeed --deepspeed_config").split() + [path]
    config = parse_config(argv, world_size=2)
    assert (config.model.num_layers, config.model.hidden_size, config.model.num_attention_heads) == (2, 64, 4)
    assert config.model.max_position_embeddings == 128
    assert config.parallel.tensor_model_parallel_size == 2 and config.parallel.data_parallel_size == 1
    assert (config.training.micro_batch_size, config.training.global_batch_size) == (2, 8)
    assert config.training.gradient_accumulation_steps == 4
    assert config.zero.stage == 1
    assert config.deepspeed_config_path == path
    assert config.deepspeed_config["train_batch_size"] == 8


def test_megatron_deepspeed_llama_script_flags(tmp_path):
    # Spellings from Megatron-DeepSpeed's Llama-2 example script.
    argv = ("--num-layers 4 --hidden-size 64 --ffn-hidden-size 176 --num-attention-heads 4 "
            "--num-key-value-heads 2 --seq-length 32 --max-position-embeddings 32 --micro-batch-size 1 "
            "--global-batch-size 4 --train-iters 20 --lr 3e-4 --lr-decay-style cosine --min-lr 3e-5 "
            "--weight-decay 0.1 --clip-grad 1.0 --lr-warmup-iters 2 --adam-beta1 0.9 --adam-beta2 0.95 "
            "--log-interval 1 --save-interval 10 --eval-interval 10 --eval-iters 1 --bf16 "
            "--attention-dropout 0 --hidden-dropout 0 --use-rotary-position-embeddings "
            "--untie-embeddings-and-output-weights --swiglu --normalization rmsnorm --disable-bias-linear "
            "--zero-stage=1 --deepspeed --deepspeed-activation-checkpointing --checkpoint-activations "
            "--no-pipeline-parallel --split 949,50,1 --tokenizer-type SentencePieceTokenizer "
            f"--tokenizer-model tok.model --save {tmp_path} --data-path 0.3 a_text 0.7 b_text "
            "--local_rank=0").split()
    config = parse_config(argv, world_size=1)
    model = config.model
    assert model.position_embedding_type == "rope" and model.normalization == "RMSNorm"
    assert model.swiglu and not model.add_bias_linear and model.untie_embeddings_and_output_weights
    assert (model.num_key_value_heads, model.ffn_hidden_size) == (2, 176)
    assert config.recompute.recompute_granularity == "full" and config.recompute.checkpoint_activations
    assert config.precision.bf16 and config.deepspeed_config["bf16"] == {"enabled": True}
    assert config.data.data_path == ("0.3", "a_text", "0.7", "b_text")
    assert (config.training.adam_beta2, config.training.lr_decay_style) == (0.95, "cosine")


@pytest.mark.parametrize("spelling", ["--local_rank", "--local-rank"])
def test_launcher_local_rank_spellings(tiny_flags, spelling):
    assert parse_config(tiny_flags + [spelling, "3"]).parallel.local_rank == 3


def test_local_rank_and_world_size_from_environment(tiny_flags, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    config = parse_config(tiny_flags)
    assert (config.parallel.local_rank, config.parallel.world_size, config.parallel.data_parallel_size) == (1, 4, 4)
    assert parse_config(tiny_flags, world_size=2).parallel.world_size == 2  # the argument wins


def test_bad_world_size_environment_is_a_config_error(tiny_flags, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not an integer"):
        parse_config(tiny_flags)


def test_dash_spelling_of_deepspeed_config(tiny_flags, ds_json):
    path = ds_json({"zero_optimization": {"stage": 2}})
    assert parse_config(tiny_flags + ["--deepspeed-config", path]).zero.stage == 2


@pytest.mark.parametrize("flags, message", [
    (["--swiglu", "--no-swiglu"], "--swiglu contradicts --no-swiglu; drop one"),
    (["--num-key-value-heads", "2", "--num-query-groups", "4"],
     "--num-key-value-heads 2 contradicts --num-query-groups 4; drop one"),
    (["--recompute-granularity", "selective", "--checkpoint-activations"],
     "--recompute-granularity selective contradicts --checkpoint-activations; drop one"),
    (["--position-embedding-type", "learned_absolute", "--use-rotary-position-embeddings"],
     "--position-embedding-type learned_absolute contradicts --use-rotary-position-embeddings"),
    (["--add-bias-linear", "--disable-bias-linear"], "--add-bias-linear contradicts --disable-bias-linear"),
])
def test_contradicting_spellings_are_errors(tiny_flags, flags, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(tiny_flags + flags)


def test_agreeing_spellings_are_fine(tiny_flags):
    flags = ["--num-key-value-heads", "2", "--num-query-groups", "2", "--group-query-attention"]
    assert parse_config(tiny_flags + flags).model.num_key_value_heads == 2


def test_group_query_attention_needs_a_group_count(tiny_flags):
    with pytest.raises(ConfigError, match="--group-query-attention needs the number of groups"):
        parse_config(tiny_flags + ["--group-query-attention"])


def test_no_pipeline_parallel_contradicts_pipeline_size(tiny_flags):
    with pytest.raises(ConfigError, match="--no-pipeline-parallel contradicts --pipeline-model-parallel-size 2"):
        parse_config(tiny_flags + ["--no-pipeline-parallel", "--pipeline-model-parallel-size", "2"], world_size=2)


@pytest.mark.parametrize("flags, message", [
    (["--not-a-flag", "1"], "unknown flag --not-a-flag"),
    (["--num-lay", "2"], r"unknown flag --num-lay \(did you mean --num-layers\?\)"),  # no prefix matching
    (["--micro-batch-size", "two"], "expected int, got 'two'"),
    (["--normalization", "BatchNorm"], "'BatchNorm' is not one of LayerNorm, RMSNorm"),
    (["--zero-stage", "4"], "'4' is not one of 0, 1, 2, 3"),
    (["--data-impl", "lazy"], "--data-impl lazy: only mmap is possible here"),  # mmap is a logged no-op
])
def test_bad_flags_raise_config_error_not_system_exit(tiny_flags, flags, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(tiny_flags + flags)


def test_choices_are_case_insensitive_and_canonicalised(tiny_flags):
    config = parse_config(tiny_flags + ["--normalization", "layernorm", "--tokenizer-type", "nulltokenizer",
                                        "--vocab-size", "100"])
    assert (config.model.normalization, config.data.tokenizer_type) == ("LayerNorm", "NullTokenizer")


def test_only_typed_flags_are_explicit():
    command_line = parse_command_line(["--hidden-size", "64", "--bf16", "--disable-bias-linear"])
    assert command_line.values == {"hidden_size": 64, "bf16": True, "add_bias_linear": False}
    assert command_line.spelling["add_bias_linear"] == "--disable-bias-linear"
    assert command_line.deepspeed_config_path is None


def test_help_lists_flags_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser("pretrain_gpt_ds.py").parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--make-vocab-size-divisible-by" in text and "Default: 128" in text
    assert "--deepspeed_config" in text and "--contigious-checkpointing" in text
