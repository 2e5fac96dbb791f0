"""Context-parallel flags: bad input fails in the configuration, before any process group or engine exists."""

import pytest

from megatron.config import ConfigError, parse_config

BASE = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --max-position-embeddings 64 "
        "--micro-batch-size 1 --global-batch-size 4 --lr 1e-3 --train-iters 2 --attention-dropout 0").split()


def _error(extra, world_size):
    base = BASE
    if "--train-samples" in extra:  # a run sized in samples instead (what --rampup-batch-size needs)
        index = BASE.index("--train-iters")
        base = BASE[:index] + BASE[index + 2:]
    with pytest.raises(ConfigError) as raised:
        parse_config(base + extra.split(), world_size=world_size)
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
def test_proven_combinations_are_accepted(flag):
    config = parse_config(BASE + f"{flag} 2 --tensor-model-parallel-size 2".split(), world_size=8)
    assert config.parallel.context_parallel_axis_size == 2 and config.parallel.data_parallel_size == 2
    config = parse_config(BASE + f"{flag} 2 --pipeline-model-parallel-size 2 --pipeline-schedule 1f1b".split(),
                          world_size=4)
    assert config.parallel.pipeline_schedule == "1f1b"
    # tests/context_parallel/test_whole_runs.py: ring and Ulysses with TP + SP, full recomputation, ZeRO-2 offload
    config = parse_config(BASE + f"{flag} 2 --tensor-model-parallel-size 2 --sequence-parallel "
                                 f"--recompute-granularity full --zero-stage 2 --offload-optimizer cpu".split(),
                          world_size=4)
    assert config.parallel.sequence_parallel and config.recompute.recompute_granularity == "full"
    assert config.zero.stage == 2 and config.zero.offload_optimizer == "cpu"


@pytest.mark.parametrize("flag", ["--context-parallel-size", "--ds-sequence-parallel-size"])
def test_selective_recomputation_is_accepted(flag):
    config = parse_config(BASE + f"{flag} 2 --recompute-granularity selective".split(), world_size=2)
    assert config.recompute.recompute_granularity == "selective"


@pytest.mark.parametrize("extra,named", [
    ("--pipeline-model-parallel-size 2", "--pipeline-schedule deepspeed (only 1f1b is proven with CP"),
    ("--pipeline-model-parallel-size 2 --pipeline-schedule interleaved --num-layers-per-virtual-pipeline-stage 1",
     "--pipeline-schedule interleaved"),
    ("--num-experts 2", "--num-experts (MoE)"),
    ("--recompute-granularity full --partition-activations", "--partition-activations"),
    ("--rampup-batch-size 2 2 4 --train-samples 16", "--rampup-batch-size"),
    ("--zero-stage 1 --offload-optimizer cpu", "--offload-optimizer with ZeRO-1 (only ZeRO-2 is proven with CP)"),
    ("--zero-stage 3 --offload-optimizer cpu", "--offload-optimizer with ZeRO-3"),
    ("--zero-stage 3 --offload-param cpu", "--offload-param"),
])
@pytest.mark.parametrize("flag", ["--context-parallel-size", "--ds-sequence-parallel-size"])
def test_unproven_combinations_are_refused(flag, extra, named):
    message = _error(f"{flag} 2 {extra}", 4)
    assert f"{flag} 2 is not supported together with {named}" in message
    assert f"or run with {flag} 1" in message

