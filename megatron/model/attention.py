"""Self-attention with tensor parallelism, grouped-query attention and rotary embeddings.

Fused QKV layout (checkpoint conversion depends on it). With np query heads, ng key/value groups
(ng = num_key_value_heads; ng = np is plain multi-head attention), q = np / ng query heads per group and
head size hn, ``linear_qkv.weight`` is [(np + 2 ng) hn, h] and its rows, viewed as [ng, q + 2, hn, h], are

    W[g, 0:q]   the q query heads of group g, i.e. query heads g*q .. g*q + q - 1   (rows of HF q_proj)
    W[g, q]     key head g                                                         (rows of HF k_proj)
    W[g, q + 1] value head g                                                       (rows of HF v_proj)

(the bias, when present, is the same with h dropped). Groups are contiguous, so the contiguous row shard of
TP rank r holds whole groups r*ng/tp .. (r+1)*ng/tp - 1 with their own keys and values: attention needs no
communication, TP must divide ng, and the full tensor is the same for every TP size (a universal checkpoint
concatenates the shards along dim 0 with no sub-parameter bookkeeping). This is Megatron-LM's layout.

Query/key rows use RoPE's rotate-half convention (rotary.py), the same as Hugging Face Llama's q_proj/k_proj.

Masking: without ``attention_mask`` attention is causal (SDPA's is_causal fast path). With it, the mask is
the whole rule: a bool tensor broadcastable to [b, np, s, s] where True means *masked out* (Megatron's
convention; the data pipeline emits [b, 1, s, s] document-causal masks with --reset-attention-mask).
Under context parallelism the mask argument is a :class:`ContextParallelMask` instead: this rank holds s/CP
tokens in zig-zag order and attention runs over the CP group (ring or Ulysses), masked by global positions.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    divide,
    get_rng_tracker,
    init_method_normal,
    scaled_init_method_normal,
)
from megatron.model.config_checks import num_key_value_heads, tensor_parallel_size
from megatron.model.context_parallel.masks import ContextParallelMask
from megatron.model.embedding import default_position_ids
from megatron.model.recompute import checkpoint_sharded_inputs
from megatron.model.rotary import RotaryEmbedding, apply_rotary_embedding

# SDPA repeats key/value heads for GQA itself from torch 2.5 on; before that we repeat them explicitly.
_SDPA_HAS_ENABLE_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)


def core_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: Optional[torch.Tensor], dropout_p: float, causal: bool = True) -> torch.Tensor:
    """softmax(q k^T / sqrt(hn) + mask) v with dropout on the probabilities.

    query [b, nq, s, hn], key/value [b, nkv, s, hn] with nq a multiple of nkv -> context [b, nq, s, hn].
    The probabilities are TP-sharded (this rank's heads), so dropout draws from the tracked per-TP-rank
    generator; under recomputation DeepSpeed restores that generator first, so the same mask is drawn.
    """
    gqa = {}
    if query.size(1) != key.size(1):
        if _SDPA_HAS_ENABLE_GQA:
            gqa = {"enable_gqa": True}
        else:
            repeats = query.size(1) // key.size(1)
            key = key.repeat_interleave(repeats, dim=1)      # [b, nkv, s, hn] -> [b, nq, s, hn]
            value = value.repeat_interleave(repeats, dim=1)
    if attention_mask is None:
        mask_args = {"is_causal": causal}
    else:
        mask_args = {"attn_mask": ~attention_mask}  # SDPA's bool mask is True where attention is *allowed*
    if dropout_p > 0.0:
        with get_rng_tracker().fork():
            return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, **mask_args, **gqa)
    return F.scaled_dot_product_attention(query, key, value, **mask_args, **gqa)


def check_attention_mask(attention_mask: torch.Tensor, seq_length: int, key_length: Optional[int] = None) -> None:
    key_length = seq_length if key_length is None else key_length
    if attention_mask.dtype != torch.bool:
        raise ValueError(f"attention_mask must be a bool tensor with True where attention is masked out "
                         f"(Megatron's convention), got dtype {attention_mask.dtype}; convert it with "
                         f"`mask < 0.5` if it holds 1.0 where attention is allowed")
    if attention_mask.dim() != 4 or attention_mask.shape[-2:] != (seq_length, key_length):
        raise ValueError(f"attention_mask must be [b, 1, s, k] (or [1, 1, s, k]) with s = {seq_length} queries "
                         f"and k = {key_length} keys, got shape {tuple(attention_mask.shape)}")


class SelfAttention(nn.Module):
    """Input [s, b, h] ([s/tp, b, h] with sequence parallelism) -> output of the same shape."""

    def __init__(self, config, *, sequence_parallel: bool = False, recompute_core_attention: bool = False,
                 params_dtype: torch.dtype = torch.float32):
        super().__init__()
        tp = tensor_parallel_size()
        self.head_dim = config.kv_channels
        num_heads, num_groups = config.num_attention_heads, num_key_value_heads(config)
        self.heads_per_group = num_heads // num_groups
        self.num_heads_per_rank = divide(num_heads, tp, "number of attention heads (num_attention_heads)")
        self.num_groups_per_rank = divide(num_groups, tp, "number of key/value heads (num_key_value_heads)")
        self.attention_dropout = config.attention_dropout
        self.recompute_core_attention = recompute_core_attention

        self.linear_qkv = ColumnParallelLinear(
            config.hidden_size, (num_heads + 2 * num_groups) * self.head_dim, bias=config.add_bias_linear,
            gather_output=False, init_method=init_method_normal(config.init_method_std),
            sequence_parallel=sequence_parallel, params_dtype=params_dtype)
        self.linear_proj = RowParallelLinear(
            num_heads * self.head_dim, config.hidden_size, bias=config.add_bias_linear, input_is_parallel=True,
            init_method=scaled_init_method_normal(config.init_method_std, config.num_layers),
            sequence_parallel=sequence_parallel, params_dtype=params_dtype)
        if config.position_embedding_type == "rope":
            self.rotary = RotaryEmbedding(self.head_dim, config.rotary_base, config.max_position_embeddings)
        else:
            self.rotary = None

    def forward(self, hidden_states: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, kv_cache=None) -> torch.Tensor:
        """``kv_cache`` (inference only, megatron/inference/kv_cache.py): this layer's keys and values of the
        tokens before these s; the new ones are appended and attention runs over all of them, so the mask
        (required then) is [b, 1, s, past + s]."""
        qkv = self.linear_qkv(hidden_states)         # [s, b, ng/tp * (q + 2) * hn] (full s under SP: gathered)
        s, b = qkv.shape[:2]
        ng, q, hn = self.num_groups_per_rank, self.heads_per_group, self.head_dim
        qkv = qkv.view(s, b, ng, q + 2, hn)          # -> [s, b, ng/tp, q + 2, hn]
        # split, not three slices: its backward writes the gradient once (a cat) instead of zero-filling a
        # full qkv-sized tensor per slice and summing them.
        query, key, value = qkv.split([q, 1, 1], dim=3)
        query = query.reshape(s, b, ng * q, hn)               # [s, b, ng/tp, q, hn] -> [s, b, np/tp, hn]
        key, value = key.squeeze(3), value.squeeze(3)         # [s, b, ng/tp, hn] each

        if self.rotary is not None:
            if position_ids is None:
                position_ids = default_position_ids(b, s, device=qkv.device)
            cos, sin = self.rotary(position_ids)             # [s, b, 1, hn] each
            query = apply_rotary_embedding(query, cos, sin)
            key = apply_rotary_embedding(key, cos, sin)
        # [s, b, n, hn] -> [b, n, s, hn], SDPA's layout
        query, key, value = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        if isinstance(attention_mask, ContextParallelMask):
            if kv_cache is not None:
                raise ValueError("context-parallel attention does not support a KV cache (inference); "
                                 "generate with context parallelism 1")
            if self.recompute_core_attention:
                # Backward reruns the whole CP attention (its ring passes or all-to-alls too) on the saved
                # q/k/v; every CP rank recomputes the same layer at the same point, so the collectives pair up.
                context = checkpoint_sharded_inputs(attention_mask.attend, query, key, value)
            else:
                context = attention_mask.attend(query, key, value)   # [b, np/tp, s/CP, hn]
            return self._project(context, s, b)
        if kv_cache is not None:
            # SDPA's causal flag aligns the top-left corner, wrong once keys outnumber queries: the caller's
            # mask says which cached keys the new tokens see. Without one, a single new token per row sees
            # every cached key (no causal flag then).
            if attention_mask is None and s != 1:
                raise ValueError("attention with a KV cache over several new tokens needs an explicit "
                                 "attention_mask [b, 1, s, past + s]")
            key, value = kv_cache.append(key, value)          # [b, ng/tp, past + s, hn] each
        if attention_mask is not None:
            check_attention_mask(attention_mask, s, key.size(2))
        dropout_p = self.attention_dropout if self.training else 0.0
        if self.recompute_core_attention:
            # Selective recomputation: keep q/k/v, drop the [b, np, s, s] probabilities and recompute them.
            context = checkpoint_sharded_inputs(core_attention, query, key, value, attention_mask, dropout_p)
        else:
            context = core_attention(query, key, value, attention_mask, dropout_p, causal=kv_cache is None)
        return self._project(context, s, b)

    def _project(self, context: torch.Tensor, s: int, b: int) -> torch.Tensor:
        # [b, np/tp, s, hn] -> [s, b, np/tp * hn]
        context = context.permute(2, 0, 1, 3).reshape(s, b, self.num_heads_per_rank * self.head_dim)
        return self.linear_proj(context)
