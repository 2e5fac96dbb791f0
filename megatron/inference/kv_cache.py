"""Per-layer key/value cache for generation: the prompt is run once (prefill), then one token per step.

Each layer's cache is preallocated for the whole generation ([b, ng/tp, max_length, hn] for keys and for
values), so a decode step writes one column instead of concatenating ever longer tensors. Keys are stored
after the rotary embedding, as attention uses them, so a cached key never needs its position again.
"""

from typing import List, Tuple

import torch


class KVCache:
    """One layer's keys and values; ``append`` adds the new tokens' and returns all of them so far."""

    def __init__(self, batch_size: int, num_groups: int, max_length: int, head_dim: int, dtype: torch.dtype,
                 device=None):
        shape = (batch_size, num_groups, max_length, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0

    def append(self, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """key/value [b, ng/tp, s, hn] of the new tokens -> keys/values [b, ng/tp, past + s, hn]."""
        end = self.length + key.size(2)
        if end > self.keys.size(2):
            raise ValueError(f"the KV cache holds {self.keys.size(2)} positions, {end} were asked for; "
                             f"allocate it for prompt length + max new tokens")
        self.keys[:, :, self.length:end] = key
        self.values[:, :, self.length:end] = value
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


def allocate_kv_caches(model, batch_size: int, max_length: int, dtype: torch.dtype) -> List[KVCache]:
    """One cache per layer of ``model`` (a GPTModel), sized for this TP rank's key/value heads."""
    caches = []
    for layer in model.layers:
        attention = layer.self_attention
        caches.append(KVCache(batch_size, attention.num_groups_per_rank, max_length, attention.head_dim, dtype))
    return caches
