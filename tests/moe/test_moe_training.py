"""Whole MoE training runs (config -> data -> model -> DeepSpeed engine -> loop) at EP = 2 equal the single-rank
run within 1e-4 over 10 steps, losses and global gradient norms (fp32, dropless, aux and z losses on).

Every run initialises itself from the same seed; experts are initialised by global id, so the layout does not
change the model. A negative control shows the MoE model trains differently from the dense one.
"""

import pytest

from tests.training.test_parity import STEPS, _values, assert_losses_close
from tests.training.whole_runs import train

RTOL = 1e-4
MOE = dict(num_experts=(4,), moe_router_topk=2, moe_aux_loss_coeff=0.01, moe_z_loss_coeff=0.001)
FAMILIES = {"gpt": dict(MOE), "mixtral": dict(model_family="mixtral", num_experts=(4,), moe_aux_loss_coeff=0.01),
            # a shared expert every token passes (tensor-parallel like the dense MLP), next to the routed ones
            "gpt_shared_expert": dict(MOE, moe_shared_expert_intermediate_size=64)}

LAYOUTS = {
    "ep2_zero1": (2, {"expert_model_parallel_size": 2}, {"zero_optimization": {"stage": 1}}),
    "ep2_zero2": (2, {"expert_model_parallel_size": 2}, {"zero_optimization": {"stage": 2}}),
    "ep2_zero2_cpu_offload": (2, {"expert_model_parallel_size": 2},
                              {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}),
    "ep2_tp2_sequence_parallel": (4, {"expert_model_parallel_size": 2, "tensor_model_parallel_size": 2,
                                      "sequence_parallel": True}, {"zero_optimization": {"stage": 1}}),
    # aux/z losses of both stages join their own stage's backward (megatron/pipeline/scheduled_pipeline.py)
    "ep2_pp2_1f1b": (4, {"expert_model_parallel_size": 2, "pipeline_model_parallel_size": 2,
                         "pipeline_schedule": "1f1b"}, {"zero_optimization": {"stage": 1}}),
}


def _moe_values(family, corpus, **overrides):
    base = "llama" if family == "mixtral" else "gpt"  # _values' dense families
    values = _values(base, corpus, **FAMILIES[family])
    values.update(overrides)
    return values


_BASELINES = {}


def _baseline(family, corpus):
    if family not in _BASELINES:
        _BASELINES[family] = train(1, _moe_values(family, corpus), {"zero_optimization": {"stage": 0}})
    return _BASELINES[family]


# gpt runs every layout; mixtral (SwiGLU experts, RMSNorm, RoPE) two of them, to keep the suite short.
CASES = [("gpt", layout) for layout in sorted(LAYOUTS)] + [("mixtral", "ep2_zero2"),
                                                            ("mixtral", "ep2_tp2_sequence_parallel"),
                                                            ("gpt_shared_expert", "ep2_zero1")]


@pytest.mark.parametrize("family,layout", CASES)
def test_expert_parallel_run_equals_single_rank(family, layout, synthetic_corpus):
    world, overrides, ds_json = LAYOUTS[layout]
    expected = _baseline(family, synthetic_corpus)
    expected_losses, expected_norms, expected_moe = expected["losses"], expected["norms"], expected["moe"]
    run = train(world, _moe_values(family, synthetic_corpus, **overrides), ds_json)
    losses, norms, moe = run["losses"], run["norms"], run["moe"]
    assert_losses_close(losses, expected_losses, RTOL, f"{family} {layout}")
    assert len(norms) == len(expected_norms) and norms, (norms, expected_norms)
    for a, e in zip(norms, expected_norms):
        assert abs(a - e) <= RTOL * abs(e), f"{family} {layout}: grad norm {a} vs single-rank {e}"
    # the log reports the whole model's aux loss and per-layer load, also when stages hold different layers
    assert sorted(moe) == sorted(expected_moe) and "moe1_tokens_per_expert" in moe, (moe, expected_moe)
    aux, expected_aux = moe["moe_aux_loss"], expected_moe["moe_aux_loss"]
    assert abs(aux - expected_aux) <= RTOL * abs(expected_aux), f"{family} {layout}: aux {aux} vs {expected_aux}"
    loads = {key: value for key, value in moe.items() if key != "moe_aux_loss"}
    assert loads == {key: value for key, value in expected_moe.items() if key != "moe_aux_loss"}, (loads, expected_moe)


def test_negative_control_moe_differs_from_dense(synthetic_corpus):
    moe_losses = _baseline("gpt", synthetic_corpus)["losses"]
    dense_losses = train(1, _values("gpt", synthetic_corpus), {"zero_optimization": {"stage": 0}})["losses"]
    assert moe_losses[0] != dense_losses[0]
    assert max(abs(a - b) for a, b in zip(moe_losses, dense_losses)) > 1e-2, (moe_losses, dense_losses)
