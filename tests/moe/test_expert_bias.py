"""Aux-loss-free load balancing (--moe-router-enable-expert-bias, DeepSeek-V3 style).

- the bias update equals rate * sign(mean load - load) on a hand-checked load, and the bias changes which
  experts are chosen but not the combine weights (those stay the renormalised unbiased scores);
- the layer at EP = 2 with a (non-zero) bias equals the serial twin with the same bias;
- a 10-step Mixtral-family run at EP = 2 x ZeRO-1 with the bias on equals the single-rank run within 1e-4 (the
  load is summed over the whole batch, so every rank moves its bias alike), and differs from the run without it;
- --save/--load resumes exactly with the bias on (the bias is a buffer saved in the checkpoint).
"""

import pytest
import torch

from tests.distributed import distributed_test
from tests.moe.test_moe_layer import _compare, _configs
from tests.moe.test_moe_training import RTOL, _moe_values
from tests.training.test_parity import assert_losses_close
from tests.training.whole_runs import train


def test_bias_update_formula_and_selection_only():
    from megatron.model.moe.router import Router

    model, moe = _configs(4, True, moe_router_enable_expert_bias=True, moe_router_bias_update_rate=0.1,
                          moe_router_topk=2)
    router = Router(model.hidden_size, moe, 0.02, sequence_parallel=False, params_dtype=torch.float32)
    router.load_since_update.copy_(torch.tensor([3.0, 1.0, 2.0, 6.0]))        # mean 3
    router.update_expert_bias([None])
    assert router.score_bias.tolist() == pytest.approx([0.0, 0.1, 0.1, -0.1])
    assert router.load_since_update.tolist() == [0, 0, 0, 0]

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    router.score_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0]))              # pulls expert 3 into the top 2
    experts, weights, _ = router._scores(logits)
    assert experts.tolist() == [[3, 0]]
    probs = torch.softmax(logits, -1)[0]
    expected = torch.stack([probs[3], probs[0]]) / (probs[3] + probs[0])     # unbiased, renormalised
    torch.testing.assert_close(weights[0], expected, rtol=0, atol=1e-7)
    router.train()
    router(torch.randn(6, model.hidden_size), 1)
    assert router.load_since_update.sum().item() == 6 * 2                    # every routed slot is counted


@distributed_test(world_size=4)
def test_layer_with_expert_bias_equals_serial_twin():
    bias = torch.tensor([0.05, -0.05, 0.1, 0.0, -0.1, 0.02, 0.08, -0.03])
    _compare(2, expert_bias=bias, moe_router_enable_expert_bias=True)


EXPERT_BIAS = dict(moe_router_enable_expert_bias=True, moe_router_bias_update_rate=1e-2)


def test_expert_parallel_run_with_expert_bias_equals_single_rank(synthetic_corpus):
    single = train(1, _moe_values("mixtral", synthetic_corpus, **EXPERT_BIAS), {"zero_optimization": {"stage": 0}})
    parallel = train(2, _moe_values("mixtral", synthetic_corpus, expert_model_parallel_size=2, **EXPERT_BIAS),
                     {"zero_optimization": {"stage": 1}})
    assert_losses_close(parallel["losses"], single["losses"], RTOL, "losses")
    assert len(parallel["norms"]) == len(single["norms"]) and single["norms"]
    for a, e in zip(parallel["norms"], single["norms"]):
        assert abs(a - e) <= RTOL * abs(e), f"grad norm {a} vs single-rank {e}"
    without = train(1, _moe_values("mixtral", synthetic_corpus), {"zero_optimization": {"stage": 0}})
    gap = max(abs(a - b) for a, b in zip(single["losses"], without["losses"]))
    assert gap > 1e-4, "the expert bias changed nothing"


def _bias_run(values):
    run = train(2, values, {"zero_optimization": {"stage": 1}})
    return run["iteration"], run["losses"]


def test_resume_with_expert_bias_is_exact(synthetic_corpus, tmp_path):
    from megatron.checkpointing.safe_load import safe_torch_load

    save_dir = str(tmp_path / "ckpt")
    values = dict(expert_model_parallel_size=2, train_iters=6, lr_decay_iters=6, eval_interval=100, **EXPERT_BIAS)
    uninterrupted = _bias_run(_moe_values("mixtral", synthetic_corpus, **values))
    first = _bias_run(_moe_values("mixtral", synthetic_corpus, save=save_dir, exit_interval=3, **values))
    assert first == (3, uninterrupted[1][:3])
    saved = safe_torch_load(f"{save_dir}/global_step3/mp_rank_00_model_states.pt")["module"]
    bias = saved["layers.0.mlp.router.score_bias"]
    assert bias.abs().sum() > 0, "the saved expert bias never moved"
    resumed = _bias_run(_moe_values("mixtral", synthetic_corpus, load=save_dir, **values))
    assert resumed == (6, uninterrupted[1][3:]), (resumed, uninterrupted)
