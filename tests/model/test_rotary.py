"""RoPE against a straightforward reference, and position ids taken from the batch.

Reference convention (rotate-half, as Hugging Face Llama): dimension i < d/2 of a head is paired with
dimension i + d/2, and the pair (x_i, x_{i+d/2}) is rotated by the angle  position * base^(-2i/d).
"""

import math

import pytest
import torch

from megatron.model.rotary import RotaryEmbedding, apply_rotary_embedding

DIM, BASE = 8, 500.0


def reference_rope(x, positions, base):
    """x [s, b, n, d], positions [b, s]: rotate each (i, i + d/2) pair with an explicit 2x2 rotation."""
    out = x.clone().double()
    seq, batch, heads, dim = x.shape
    half = dim // 2
    for t in range(seq):
        for sample in range(batch):
            position = positions[sample, t].item()
            for i in range(half):
                angle = position * base ** (-2.0 * i / dim)
                c, s = math.cos(angle), math.sin(angle)
                a, b = x[t, sample, :, i].double(), x[t, sample, :, i + half].double()
                out[t, sample, :, i] = c * a - s * b
                out[t, sample, :, i + half] = s * a + c * b
    return out.float()


def rope(x, positions, base=BASE, max_positions=64):
    cos, sin = RotaryEmbedding(x.shape[-1], base, max_positions)(positions)
    return apply_rotary_embedding(x, cos, sin)


def test_matches_reference_rotation():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 3, DIM, generator=generator)         # [s, b, n, d]
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 30, 2, 0, 63, 11]])
    torch.testing.assert_close(rope(x, positions), reference_rope(x, positions, BASE), rtol=0, atol=1e-5)


def test_reset_position_ids_restart_the_rotation():
    """Two packed documents with positions [0..3, 0..3] rotate the second one like a document of its own."""
    x = torch.randn(8, 1, 2, DIM, generator=torch.Generator().manual_seed(1))
    reset = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    packed = rope(x, reset)
    alone = rope(x[4:], torch.arange(4).unsqueeze(0))
    torch.testing.assert_close(packed[4:], alone, rtol=0, atol=0)
    continuing = rope(x, torch.arange(8).unsqueeze(0))
    assert (continuing[4:] - alone).abs().max() > 1e-2, "positions 4..7 must rotate differently from 0..3"


def test_attention_scores_depend_only_on_relative_position():
    generator = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 1, 1, DIM, generator=generator), torch.randn(1, 1, 1, DIM, generator=generator)

    def score(m, n):
        return (rope(q, torch.tensor([[m]])) * rope(k, torch.tensor([[n]]))).sum().item()

    assert score(9, 4) == pytest.approx(score(5, 0), abs=1e-5)
    assert score(9, 4) != pytest.approx(score(9, 5), abs=1e-3)


def test_odd_head_dimension_is_refused():
    with pytest.raises(ValueError, match="even head dimension"):
        RotaryEmbedding(7)
