"""Rotary position embedding (RoPE), rotate-half convention.

Convention (GPT-NeoX, Hugging Face Llama, Megatron's default): a head vector x of size d is split into a
first half x1 = x[:d/2] and a second half x2 = x[d/2:]; dimension i of the first half and dimension i of
the second half form one rotating pair, turned by the angle  position * theta^(-2i/d):

    rope(x) = x * cos + rotate_half(x) * sin,   rotate_half(x) = [-x2, x1],
    cos = [cos(a), cos(a)],  sin = [sin(a), sin(a)],  a_i = position * rotary_base^(-2i/d), i < d/2.

(The interleaved convention of the original RoFormer / Meta's Llama code pairs dims (2i, 2i+1) instead; a
Meta checkpoint must have its q/k rows permuted to use this one, as Hugging Face's converter does.)

The module holds the cos/sin table for positions [0, max_position_embeddings) and looks rows up by the
batch's position ids, so packed documents with reset position ids (--reset-position-ids) each restart at
position 0. The table is computed in fp32 once; if the module is cast to bf16 the table is rounded once,
which is what Hugging Face does when it casts cos/sin to the activation dtype.
"""

from typing import Tuple

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_embedding(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [s, b, n, d] rotated by cos/sin [s, b, 1, d] (broadcast over the heads n)."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, rotary_base: float = 10000.0, max_position_embeddings: int = 2048):
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"rotary embeddings need an even head dimension (kv_channels), got {dim}; "
                             f"choose hidden_size / num_attention_heads (or --kv-channels) even")
        self.dim, self.rotary_base, self.max_position_embeddings = dim, rotary_base, max_position_embeddings
        inv_freq = 1.0 / (rotary_base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # [d/2]
        positions = torch.arange(max_position_embeddings, dtype=torch.float64)
        angles = torch.outer(positions, inv_freq)                                # [max_pos, d/2]
        angles = torch.cat((angles, angles), dim=-1)                             # [max_pos, d]
        # Not persistent: derived from the config, so it never belongs in a checkpoint.
        self.register_buffer("cos_table", angles.cos().float(), persistent=False)
        self.register_buffer("sin_table", angles.sin().float(), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """position_ids [b, s] -> (cos, sin), each [s, b, 1, d], ready for apply_rotary_embedding."""
        cos = self.cos_table[position_ids]          # [b, s, d]
        sin = self.sin_table[position_ids]
        # [b, s, d] -> [s, b, 1, d]
        return cos.transpose(0, 1).unsqueeze(2), sin.transpose(0, 1).unsqueeze(2)
