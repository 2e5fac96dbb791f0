"""Whole training runs with context parallelism equal the single-rank run (fp32, 10 steps, rel 1e-4).

The full job (config -> data -> model -> DeepSpeed engine -> loop) as in tests/training/test_parity.py, each
run initialising itself from the same seed: every CP rank gets its zig-zag share of each sequence, attention
runs over the CP group (ring or Ulysses), and the loss is normalised by the global token count. Training
losses, validation losses and the global gradient norm of every step must match one rank's.
"""

import pytest

from tests.distributed import run_on_ranks
from tests.training.conftest import synthetic_corpus  # noqa: F401  (the shared corpus fixture)
from tests.training.test_parity import RTOL, STEPS, _values

# name: (world size, flag overrides, DeepSpeed JSON)
LAYOUTS = {
    "ring_cp2": (2, {"context_parallel_size": 2}, {"zero_optimization": {"stage": 0}}),
    "ulysses2": (2, {"ds_sequence_parallel_size": 2}, {"zero_optimization": {"stage": 0}}),
    "tp2_ring_cp2": (4, {"tensor_model_parallel_size": 2, "context_parallel_size": 2},
                     {"zero_optimization": {"stage": 1}}),
    "tp2_ulysses2": (4, {"tensor_model_parallel_size": 2, "ds_sequence_parallel_size": 2},
                     {"zero_optimization": {"stage": 1}}),
    "ring_cp2_zero1": (2, {"context_parallel_size": 2}, {"zero_optimization": {"stage": 1}}),
    "ring_cp2_zero2": (2, {"context_parallel_size": 2}, {"zero_optimization": {"stage": 2}}),
    "ulysses2_zero3": (2, {"ds_sequence_parallel_size": 2}, {"zero_optimization": {"stage": 3}}),
}
# Llama (GQA, RoPE) runs every layout; GPT (learned positions) the two algorithms alone and with TP.
CASES = [("llama", layout) for layout in LAYOUTS] + [("gpt", layout) for layout in
                                                     ("ring_cp2", "ulysses2", "tp2_ring_cp2")]


def _run(values, deepspeed_config):
    from megatron.config import resolve_config
    from megatron.core import comm
    from megatron.training.pretrain import pretrain

    config = resolve_config(values, deepspeed_config=deepspeed_config, world_size=comm.get_world_size())
    state = pretrain(config, printer=lambda message: None)
    norms = [record["grad_norm"] for record in state.history if "grad_norm" in record and "eval_loss" not in record]
    evals = [record["eval_loss"] for record in state.history if "eval_loss" in record]
    return state.losses, evals, norms


def run(world_size, family, corpus, overrides, deepspeed_config):
    values = _values(family, corpus, log_interval=1, **overrides)  # log every step: every grad norm
    results = run_on_ranks(world_size, _run, values=values, deepspeed_config=deepspeed_config)
    assert all(result == results[0] for result in results), "ranks disagree on the reported figures"
    return results[0]


_BASELINES = {}


def baseline(family, corpus):
    if family not in _BASELINES:
        _BASELINES[family] = run(1, family, corpus, {}, {"zero_optimization": {"stage": 0}})
    return _BASELINES[family]


def assert_close(actual, expected, what):
    assert len(actual) == len(expected) > 0, f"{what}: {len(actual)} vs {len(expected)} values"
    for index, (a, e) in enumerate(zip(actual, expected)):
        assert abs(a - e) <= RTOL * abs(e), f"{what} {index + 1}: {a!r} vs single-rank {e!r}"


@pytest.mark.parametrize("family,layout", CASES)
def test_context_parallel_run_matches_single_rank(family, layout, synthetic_corpus):  # noqa: F811
    world, overrides, deepspeed_config = LAYOUTS[layout]
    expected_losses, expected_evals, expected_norms = baseline(family, synthetic_corpus)
    losses, evals, norms = run(world, family, synthetic_corpus, overrides, deepspeed_config)
    assert len(expected_losses) == len(expected_norms) == STEPS and len(expected_evals) == 2
    assert_close(losses, expected_losses, f"{family} {layout}: step loss")
    assert_close(evals, expected_evals, f"{family} {layout}: validation loss")
    assert_close(norms, expected_norms, f"{family} {layout}: global grad norm")
