"""Vocabulary padding is invisible: with the padding columns masked to -inf, the vocab-parallel cross entropy
(plain and label-smoothed, TP=1's fused path and the sharded path) equals F.cross_entropy over the real
vocabulary alone, the padding columns get exactly zero gradient, and an argmax never picks a padding id."""

import pytest
import torch
import torch.nn.functional as F

from tests.distributed import distributed_test

REAL, ATOL = 45, 1e-5


def _padded_cross_entropy(tp, label_smoothing):
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import mask_vocab_padding_, pad_vocab_size, vocab_parallel_cross_entropy

    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp)
    rank = ps.get_tensor_model_parallel_rank()
    padded = pad_vocab_size(REAL, 8, tp)  # 48 at TP=1, 48 at TP=2, 64 at TP=4: some ranks hold padding only
    generator = torch.Generator().manual_seed(3)
    # Padding columns carry large finite values before masking: they must not matter.
    full = torch.randn(5, 2, padded, generator=generator) * 3
    full[..., REAL:] = 50.0
    target = torch.randint(0, REAL, (5, 2), generator=generator)
    local = full.chunk(tp, dim=-1)[rank].clone().requires_grad_()
    logits = mask_vocab_padding_(local * 1.0, REAL)
    loss = vocab_parallel_cross_entropy(logits, target, label_smoothing=label_smoothing, vocab_size=REAL)
    loss.sum().backward()

    real = full[..., :REAL].clone().requires_grad_()
    expected = F.cross_entropy(real.flatten(0, 1), target.flatten(), reduction="none",
                               label_smoothing=label_smoothing).view(5, 2)
    expected.sum().backward()
    assert (loss - expected).abs().max() <= ATOL, (loss, expected)
    grad_full = torch.cat([real.grad, torch.zeros(5, 2, padded - REAL)], dim=-1).chunk(tp, dim=-1)[rank]
    assert (local.grad - grad_full).abs().max() <= ATOL
    start = rank * (padded // tp)
    padding = slice(max(0, REAL - start), None)
    assert torch.all(local.grad[..., padding] == 0), "padding columns received gradient"
    assert torch.all(torch.isneginf(logits.detach()[..., padding])), "padding logits are not -inf"


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_padding_takes_no_part_in_the_loss(tp, label_smoothing):
    distributed_test(world_size=tp)(_padded_cross_entropy)(tp=tp, label_smoothing=label_smoothing)
