"""ZeRO 0-3 reduce gradients over DP x CP: two CP ranks, each with half of every sequence's tokens (zig-zag),
train the same model as one rank with whole sequences (fp32, 3 steps, active clipping, rel err <= 1e-5).

This is the trap measured with DeepSpeed's sequence-parallel getters (ZeRO 0-2 summed over SP ranks, ZeRO-3
did not reduce): our mpu hands DeepSpeed DP x CP as its data-parallel group and each CP rank's loss is its
share of the global-token mean scaled by CP, so DeepSpeed's average over DP x CP is that mean's gradient.
A token-wise MLP stands in for the model: the reduction, not attention, is under test here.
"""

import pytest
import torch

from megatron.model.context_parallel import zigzag_shard
from tests.distributed import distributed_test

WIDTH, SEQ, BATCH, STEPS, LR, CLIP, RTOL = 8, 16, 2, 3, 1e-2, 0.05, 1e-5


def _model():
    torch.manual_seed(42)
    return torch.nn.Sequential(torch.nn.Linear(WIDTH, 16), torch.nn.GELU(), torch.nn.Linear(16, WIDTH))


def _batch(step):
    generator = torch.Generator().manual_seed(500 + step)
    return (torch.randn(BATCH, SEQ, WIDTH, generator=generator),
            torch.randn(BATCH, SEQ, WIDTH, generator=generator))


def _serial():
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    losses, norms = [], []
    for step in range(STEPS):
        x, y = _batch(step)
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item())
        optimizer.step()
        losses.append(loss.item())
    return model, losses, norms


def _context_parallel(zero_stage):
    import deepspeed

    from megatron.core import comm, parallel_state as ps
    from megatron.core.grad_norm import global_grad_norm

    ps.initialize_model_parallel(context_parallel_size=2)
    cp, cp_rank, mpu = 2, ps.get_context_parallel_rank(), ps.get_deepspeed_mpu()
    config = {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": 1,
              "train_batch_size": BATCH * cp, "gradient_clipping": CLIP,
              "zero_optimization": {"stage": zero_stage}, "steps_per_print": 10 ** 9}
    if zero_stage == 3:
        with deepspeed.zero.Init(data_parallel_group=ps.get_data_parallel_group(with_context_parallel=True),
                                 mpu=mpu, config_dict_or_path=config):
            model = _model()
    else:
        model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, mpu=mpu)
    losses, norms = [], []
    for step in range(STEPS):
        x, y = (zigzag_shard(tensor, cp, cp_rank, dim=1) for tensor in _batch(step))
        squared_error_sum = ((engine(x) - y) ** 2).sum()
        global_count = BATCH * SEQ * WIDTH
        engine.backward(squared_error_sum / global_count * cp)  # DeepSpeed divides by DP x CP
        norm = global_grad_norm(engine.module.parameters()) if zero_stage == 0 else None
        engine.step()
        total = squared_error_sum.detach().clone()
        comm.all_reduce(total, group=ps.get_context_parallel_group())
        losses.append(total.item() / global_count)
        norms.append(norm if zero_stage == 0 else float(engine.get_global_grad_norm()))
    weights = {}
    for name, param in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], enabled=zero_stage == 3):
            weights[name] = param.detach().clone()
    engine.destroy()
    return losses, norms, weights


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
@distributed_test(world_size=2)
def test_cp2_zero_stage_matches_whole_sequences(zero_stage):
    losses, norms, weights = _context_parallel(zero_stage)
    serial, serial_losses, serial_norms = _serial()
    assert min(serial_norms) > CLIP, "clipping must be active in every step (the norm is part of the check)"
    for step in range(STEPS):
        assert abs(losses[step] - serial_losses[step]) <= RTOL * serial_losses[step], (step, losses, serial_losses)
        assert abs(norms[step] - serial_norms[step]) <= RTOL * serial_norms[step], (step, norms, serial_norms)
    for name, value in serial.state_dict().items():
        error = ((weights[name] - value).abs().max() / value.abs().max()).item()
        assert error <= RTOL, f"ZeRO-{zero_stage}: {name} relative error {error:.2e}"
