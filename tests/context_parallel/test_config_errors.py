"""Context-parallel flags: bad input fails in the configuration, before any process group or engine exists."""

import pytest

from megatron.config import ConfigError, parse_config

BASE = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --max-position-embeddings 64 "
        "--micro-batch-size 1 --global-batch-size 4 --lr 1e-3 --train-iters 2 --attention-dropout 0").split()


def _error(extra, world_size):
    with pytest.raises(ConfigError) as raised:
        parse_config(BASE + extra.split(), world_size=world_size)
    return str(raised.value)


def test_flags_default_to_one_and_derive_data_parallel_over_the_rest():
    config = parse_config(BASE, world_size=2)
    assert config.parallel.context_parallel_size == 1 and config.parallel.ds_sequence_parallel_size == 1
    assert config.parallel.data_parallel_size == 2


def test_sequence_not_divisible_by_twice_cp():
    message = _error("--context-parallel-size 4 --seq-length 36", 4)
    assert "--seq-length 36 is not divisible by 2 x --context-parallel-size 4 = 8" in message
    assert "use a multiple of 8" in message


def test_heads_per_tp_rank_not_divisible_by_ulysses_degree():
    message = _error("--ds-sequence-parallel-size 2 --tensor-model-parallel-size 2 --num-attention-heads 8 "
                     "--num-key-value-heads 2", 4)
    assert "--ds-sequence-parallel-size 2 must divide the attention heads per tensor-parallel rank" in message
    assert "--num-key-value-heads 2 / TP 2 = 1 key/value heads" in message


def test_ring_and_ulysses_at_once():
    message = _error("--context-parallel-size 2 --ds-sequence-parallel-size 2", 4)
    assert "combining them is not supported: keep one of the two" in message


def test_attention_form_without_context_parallel_support():
    message = _error("--context-parallel-size 2 --attention-dropout 0.1", 2)
    assert "--context-parallel-size 2 with --attention-dropout 0.1" in message
    assert "set --attention-dropout 0" in message


def test_world_not_divisible_by_tp_cp_pp():
    message = _error("--context-parallel-size 4", 2)
    assert "world size 2 is not divisible by tensor-parallel 1 x pipeline-parallel 1 x context-parallel 4 = 4" \
        in message


@pytest.mark.parametrize("flag", ["--context-parallel-size", "--ds-sequence-parallel-size"])
def test_whole_model_training_with_context_parallelism_is_refused_until_wired(flag):
    # The ops are tested in test_attention_ops.py; the model does not call them yet, so a run must not start.
    message = _error(f"{flag} 2", 2)
    assert f"{flag} 2: context-parallel attention ops exist" in message
    assert f"run with {flag} 1" in message
