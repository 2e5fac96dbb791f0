"""The MoE layer at EP = 1, 2, 4 equals a serial twin: every expert on one rank, a plain loop over experts,
the same router (same code, same initial values by parameter name).

Outputs, input gradients, router and expert weight gradients and the aux / z losses agree within 1e-5 (fp32).
Each rank routes its own tokens; an expert's gradient is the sum of what every rank of the EP group sends it,
so the twin's expert gradients are summed over the EP group before comparing. Capacity mode uses the same
per-rank capacity rule in the twin and must drop exactly the same (token, expert) slots.
"""

import dataclasses

import pytest
import torch
from torch import nn

from tests.distributed import distributed_test

ATOL = 1e-5
SEQ, BATCH, HIDDEN, FFN = 8, 2, 16, 24


def _configs(experts, swiglu, **moe_overrides):
    from megatron.config.model import ModelConfig
    from megatron.config.moe import MoEConfig

    model = ModelConfig(num_layers=2, hidden_size=HIDDEN, num_attention_heads=2, seq_length=SEQ, swiglu=swiglu,
                        ffn_hidden_size=FFN, add_bias_linear=not swiglu)
    moe = MoEConfig(num_experts=(experts,), moe_aux_loss_coeff=0.01, moe_z_loss_coeff=0.001,
                    **moe_overrides)
    return model, moe


class SerialTwin(nn.Module):
    """Router + every expert, named as in MoELayer so the same seed gives the same values."""

    def __init__(self, model, moe):
        from megatron.model.moe.experts import LocalExperts
        from megatron.model.moe.router import Router

        super().__init__()
        self.router = Router(model.hidden_size, moe, model.init_method_std, sequence_parallel=False,
                             params_dtype=torch.float32)
        self.deepspeed_moe = nn.Module()  # the module path of MoELayer's experts
        self.deepspeed_moe.experts = LocalExperts(model, moe.moe_ffn_hidden_size or model.ffn_hidden_size, 0,
                                                  moe.experts, expert_parallel_size=1, sequence_parallel=False,
                                                  dtype=torch.float32)
        self.experts = self.deepspeed_moe.experts

    def forward(self, hidden):
        seq, batch, h = hidden.shape
        tokens = hidden.reshape(-1, h)
        routing = self.router(tokens, batch)
        output = torch.zeros_like(tokens)
        for expert_id, expert in self.experts.deepspeed_experts.items():
            for slot in range(routing.experts.shape[1]):
                chosen = (routing.experts[:, slot] == int(expert_id)) & routing.kept[:, slot]
                index = chosen.nonzero().squeeze(-1)
                if index.numel():
                    output = output.index_add(0, index, expert(tokens[index]) * routing.weights[index, slot, None])
        return output.view(seq, batch, h), routing


def _compare(ep, experts=8, swiglu=True, dispatcher="alltoall", expert_bias=None, **moe_overrides):
    from megatron.core import comm
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import deferred_initialization, initialize_parameters
    from megatron.model.moe import MoELayer

    ps.initialize_model_parallel(1, 1, expert_model_parallel_size=ep)
    model, moe = _configs(experts, swiglu, moe_token_dispatcher_type=dispatcher, **moe_overrides)
    with deferred_initialization():
        layer = MoELayer(model, moe)
        twin = SerialTwin(model, moe)
    initialize_parameters(layer, 7)
    initialize_parameters(twin, 7)
    if expert_bias is not None:  # the same router expert bias on both (aux-loss-free balancing)
        layer.router.score_bias.copy_(expert_bias)
        twin.router.score_bias.copy_(expert_bias)
    generator = torch.Generator().manual_seed(100 + comm.get_rank())
    hidden = torch.randn(SEQ, BATCH, HIDDEN, generator=generator)
    probe = torch.randn(SEQ, BATCH, HIDDEN, generator=generator)

    x = hidden.clone().requires_grad_()
    out = layer(x)
    ((out * probe).sum() + layer.aux_loss + layer.z_loss).backward()
    x_twin = hidden.clone().requires_grad_()
    out_twin, routing = twin(x_twin)
    ((out_twin * probe).sum() + routing.aux_loss + routing.z_loss).backward()

    assert layer.aux_loss.item() > 0 and layer.z_loss.item() > 0
    torch.testing.assert_close(out, out_twin, rtol=0, atol=ATOL)
    torch.testing.assert_close(x.grad, x_twin.grad, rtol=0, atol=ATOL)
    torch.testing.assert_close(layer.aux_loss, routing.aux_loss, rtol=0, atol=ATOL)
    torch.testing.assert_close(layer.z_loss, routing.z_loss, rtol=0, atol=ATOL)
    torch.testing.assert_close(layer.router.weight.grad, twin.router.weight.grad, rtol=0, atol=ATOL)
    assert torch.equal(layer.tokens_per_expert,
                       torch.bincount(routing.experts[routing.kept], minlength=experts))
    twin_grads = {}
    for name, param in twin.experts.named_parameters():  # same order on every rank: all-reduce each expert
        # An expert no token of this rank chose has no gradient here (possible with a strong expert bias).
        twin_grads[name] = param.grad.clone() if param.grad is not None else torch.zeros_like(param)
        if ep > 1:
            comm.all_reduce(twin_grads[name], group=ps.get_expert_model_parallel_group())
    for name, param in layer.experts.named_parameters():
        local = int(name.split(".")[1])  # deepspeed_experts.<local id>.<...>: the twin names global ids
        name = name.replace(f"deepspeed_experts.{local}.", f"deepspeed_experts.{layer.experts.first + local}.", 1)
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        torch.testing.assert_close(grad, twin_grads[name], rtol=0, atol=ATOL, msg=lambda m: f"{name}: {m}")
    assert len(list(layer.experts.parameters())) == len(twin_grads) // ep
    return int(layer.dropped_tokens.sum())


@pytest.mark.parametrize("ep", [1, 2, 4])
@distributed_test(world_size=4)
def test_dropless_layer_equals_serial_twin(ep):
    _compare(ep)


@distributed_test(world_size=4)
def test_gelu_experts_allgather_dispatcher_sigmoid_scores_per_sequence_loss():
    _compare(2, experts=4, swiglu=False, dispatcher="allgather", moe_router_score_function="sigmoid",
             moe_router_load_balancing_type="seq_aux_loss")


@distributed_test(world_size=4)
def test_pre_softmax_top1():
    _compare(4, experts=4, moe_router_pre_softmax=True, moe_router_topk=1)


@pytest.mark.parametrize("pad", [False, True])
@distributed_test(world_size=4)
def test_capacity_drops_the_same_slots_as_the_twin(pad):
    from megatron.core import comm

    dropped = _compare(2, experts=4, moe_expert_capacity_factor=0.5, moe_pad_expert_input_to_capacity=pad)
    total = torch.tensor([dropped])
    comm.all_reduce(total)
    assert total.item() > 0, "capacity factor 0.5 dropped nothing: the test would prove nothing"


def test_capacity_rule_keeps_highest_weights():
    from megatron.model.moe.router import capacity_mask, expert_capacity

    experts = torch.tensor([[0, 1], [0, 1], [0, 2], [1, 0]])
    weights = torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.5, 0.5], [0.7, 0.3]])
    assert expert_capacity(4, 2, 3, 0.75, 0) == 2
    kept = capacity_mask(experts, weights, 3, 2)
    # expert 0 slots: weights 0.6, 0.9, 0.5, 0.3 -> keeps 0.9 and 0.6; expert 1: 0.4, 0.1, 0.7 -> 0.7, 0.4
    assert kept.tolist() == [[True, True], [True, False], [False, True], [True, False]]
