"""The mpu inside real DeepSpeed engines: TP=2 x DP=2 (4 ranks), ZeRO 0-3, against the serial model.

A 2-layer tensor-parallel MLP is trained for 5 steps with gradient accumulation and active gradient
clipping; per-step losses, DeepSpeed's global grad norms and the final weights must equal a serial
nn.Linear MLP trained with torch AdamW + clip_grad_norm_ on the same global batches (fp32, rel err <= 1e-5).
"""

import pytest
import torch
import torch.nn.functional as F

from tests.distributed import distributed_test

IN, FFN, OUT = 8, 16, 8
MICRO, GRAD_ACC, STEPS = 2, 2, 5
LR, CLIP = 1e-2, 0.05
RTOL = 1e-5


class TensorParallelMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

        self.fc1 = ColumnParallelLinear(IN, FFN, init_method=lambda w: torch.nn.init.normal_(w, std=0.5))
        self.fc2 = RowParallelLinear(FFN, OUT, input_is_parallel=True,
                                     init_method=lambda w: torch.nn.init.normal_(w, std=0.5))

    def forward(self, x, y):
        return F.mse_loss(self.fc2(F.gelu(self.fc1(x))), y)


def _serial_mlp():
    fc1, fc2 = torch.nn.Linear(IN, FFN), torch.nn.Linear(FFN, OUT)
    torch.manual_seed(42)  # the TP layers draw their full weights from this stream, fc1 first
    with torch.no_grad():
        fc1.weight.normal_(std=0.5), fc1.bias.zero_()
        fc2.weight.normal_(std=0.5), fc2.bias.zero_()
    return torch.nn.Sequential(fc1, torch.nn.GELU(), fc2)


def _global_batch(step, global_batch):
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randn(global_batch, IN, generator=generator), torch.randn(global_batch, OUT, generator=generator)


def _relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def _train_serial(global_batch):
    model = _serial_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    losses, norms = [], []
    for step in range(STEPS):
        x, y = _global_batch(step, global_batch)
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item())
        optimizer.step()
        losses.append(loss.item())
    return model, losses, norms


def _train_deepspeed(zero_stage):
    import deepspeed

    from megatron.core import comm
    from megatron.core import parallel_state as ps
    from megatron.core.grad_norm import global_grad_norm

    ps.initialize_model_parallel(tensor_model_parallel_size=2)
    mpu = ps.get_deepspeed_mpu()
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    config = {
        "train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": GRAD_ACC,
        "train_batch_size": MICRO * GRAD_ACC * dp, "gradient_clipping": CLIP,
        "zero_optimization": {"stage": zero_stage}, "steps_per_print": 10 ** 9, "wall_clock_breakdown": False,
    }
    torch.manual_seed(42)
    if zero_stage == 3:
        with deepspeed.zero.Init(data_parallel_group=ps.get_data_parallel_group(), mpu=mpu, config_dict_or_path=config):
            model = TensorParallelMLP()
    else:
        model = TensorParallelMLP()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, mpu=mpu)

    global_batch = MICRO * GRAD_ACC * dp
    losses, norms = [], []
    for step in range(STEPS):
        x, y = _global_batch(step, global_batch)
        step_loss = torch.zeros(1)
        for micro_step in range(GRAD_ACC):
            start = (micro_step * dp + dp_rank) * MICRO
            loss = engine(x[start:start + MICRO], y[start:start + MICRO])
            engine.backward(loss)
            if zero_stage == 0 and engine.is_gradient_accumulation_boundary():
                # An fp32 ZeRO-0 engine clips but does not report the norm; measure the reduced grads.
                zero0_norm = global_grad_norm(engine.module.parameters())
            engine.step()
            step_loss += loss.detach() / GRAD_ACC
        comm.all_reduce(step_loss, group=ps.get_data_parallel_group())
        losses.append(step_loss.item() / dp)
        norms.append(zero0_norm if zero_stage == 0 else float(engine.get_global_grad_norm()))
    weights = {}
    for name, param in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], enabled=zero_stage == 3):
            weights[name] = param.detach().clone()
    return engine, losses, norms, weights, global_batch


def _zero_stage_matches_serial(zero_stage):
    from megatron.core import parallel_state as ps

    engine, losses, norms, weights, global_batch = _train_deepspeed(zero_stage)
    serial, serial_losses, serial_norms = _train_serial(global_batch)
    assert min(serial_norms) > CLIP, "gradient clipping must be active in every step of this test"
    for step in range(STEPS):
        assert abs(losses[step] - serial_losses[step]) <= RTOL * abs(serial_losses[step]), \
            f"ZeRO-{zero_stage} step {step}: loss {losses[step]!r} vs serial {serial_losses[step]!r}"
        assert abs(norms[step] - serial_norms[step]) <= RTOL * serial_norms[step], \
            f"ZeRO-{zero_stage} step {step}: grad norm {norms[step]!r} vs serial {serial_norms[step]!r}"
    tp_rank = ps.get_tensor_model_parallel_rank()
    expected = {
        "fc1.weight": serial[0].weight.chunk(2, dim=0)[tp_rank], "fc1.bias": serial[0].bias.chunk(2)[tp_rank],
        "fc2.weight": serial[2].weight.chunk(2, dim=1)[tp_rank], "fc2.bias": serial[2].bias,
    }
    for name, value in expected.items():
        error = _relative_error(weights[name], value.detach())
        assert error <= RTOL, f"ZeRO-{zero_stage}: final {name} relative error {error:.2e}"
    engine.destroy()


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_tp2_dp2_zero_stage_matches_serial(zero_stage):
    distributed_test(world_size=4)(_zero_stage_matches_serial)(zero_stage=zero_stage)
