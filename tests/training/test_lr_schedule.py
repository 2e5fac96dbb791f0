"""Megatron's learning-rate schedule, optimizer parameter groups and the AdamW built from them."""

import copy
import math

import pytest
import torch

from megatron.training.lr_schedule import WarmupDecayLR
from megatron.training.optimizer import build_optimizer, param_groups


def _schedule(style, warmup=10, decay=110, max_lr=1.0, min_lr=0.1):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    return WarmupDecayLR(optimizer, max_lr=max_lr, min_lr=min_lr, warmup_steps=warmup, decay_steps=decay,
                         decay_style=style), optimizer


@pytest.mark.parametrize("style", ["constant", "linear", "cosine"])
def test_warmup_is_linear_from_zero(style):
    schedule, optimizer = _schedule(style)
    assert optimizer.param_groups[0]["lr"] == 0.0  # set at construction, before the first step
    for step in range(1, 11):
        schedule.step()
        assert schedule.get_lr() == pytest.approx(step / 10)
        assert optimizer.param_groups[0]["lr"] == schedule.get_lr()


def test_decay_shapes_and_floor():
    linear, _ = _schedule("linear")
    cosine, _ = _schedule("cosine")
    constant, _ = _schedule("constant")
    # Half-way through decay (step 60 of 10..110): linear at the midpoint, cosine too (cos(pi/2) = 0).
    assert linear.lr_at(60) == pytest.approx(0.1 + 0.5 * 0.9)
    assert cosine.lr_at(35) == pytest.approx(0.1 + 0.5 * (math.cos(math.pi * 0.25) + 1) * 0.9)
    assert linear.lr_at(110) == pytest.approx(0.1) and cosine.lr_at(110) == pytest.approx(0.1)
    assert linear.lr_at(500) == 0.1 and cosine.lr_at(500) == 0.1
    assert constant.lr_at(500) == 1.0


def test_state_round_trip_restores_position():
    schedule, _ = _schedule("cosine")
    for _ in range(37):
        schedule.step()
    resumed, optimizer = _schedule("cosine")
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.get_lr() == schedule.get_lr() and optimizer.param_groups[0]["lr"] == schedule.get_lr()


@pytest.mark.parametrize("kwargs, message", [
    (dict(style="exponential"), "lr decay style 'exponential'"),
    (dict(style="cosine", min_lr=2.0), r"min_lr \(2.0\) <= lr \(1.0\)"),
    (dict(style="linear", warmup=20, decay=10), r"lr decay iterations \(10\) must exceed warmup iterations \(20\)"),
])
def test_bad_schedules_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _schedule(**kwargs)


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2, bias=False))
    groups = {group["name"]: group for group in param_groups(model, weight_decay=0.1)}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert {id(p) for p in groups["decay"]["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in groups["no_decay"]["params"]} == {id(model[0].bias), id(model[1].weight),
                                                              id(model[1].bias)}


def test_built_adamw_is_fused_and_matches_the_unfused_update():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    reference = copy.deepcopy(model)
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, cpu_offload=False)
    assert optimizer.defaults["fused"]  # torch 2.13 has a fused CPU AdamW
    unfused = torch.optim.AdamW(param_groups(reference, weight_decay=0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8,
                                foreach=False)
    inputs = torch.randn(32, 8)
    for _ in range(5):
        for net, opt in ((model, optimizer), (reference, unfused)):
            opt.zero_grad()
            net(inputs).square().mean().backward()
            opt.step()
    for fused_param, unfused_param in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(fused_param, unfused_param, rtol=1e-6, atol=1e-7)
