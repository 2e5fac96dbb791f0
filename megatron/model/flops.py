"""Model FLOPs per token, for TFLOP/s and MFU reporting (Megatron-LM's formula, GQA and SwiGLU included).

Counted per token of a training step (forward + backward = 3 x forward, since backward computes gradients
for both the input and the weight of every GEMM), multiply-add = 2 FLOPs. With L layers, hidden h, np query
heads and ng key/value heads of size hn, MLP width f, sequence s and padded vocabulary V, one forward costs

    per layer   QKV projection        2 h (np + 2 ng) hn
                attention scores      2 s np hn        (q k^T against all s keys; causality not discounted)
                attention over values 2 s np hn
                output projection     2 np hn h
                MLP                   2 h f (2 if SwiGLU else 1) + 2 f h
    once        LM head               2 h V

so per token  3 * [L * (4 h np hn + 4 h ng hn + 4 s np hn + (6 if SwiGLU else 4) h f) + 2 h V],
which for multi-head attention without SwiGLU is the familiar  6 N + 12 L h s  (N = weights in GEMMs).
These are *model* FLOPs: the recomputation of activation checkpointing is not counted (MFU, not HFU), nor are
norms, softmax or the embedding lookup.
"""

from typing import Optional

from megatron.model.config_checks import num_key_value_heads, padded_vocab_size


def model_flops_per_token(config, seq_length: Optional[int] = None) -> float:
    """Training FLOPs per token for ``config`` at ``seq_length`` (default config.seq_length)."""
    s = seq_length or config.seq_length
    h, f, hn = config.hidden_size, config.ffn_hidden_size, config.kv_channels
    heads, groups = config.num_attention_heads, num_key_value_heads(config)
    attention = 4 * h * heads * hn + 4 * h * groups * hn + 4 * s * heads * hn
    mlp = (6 if config.swiglu else 4) * h * f
    forward = config.num_layers * (attention + mlp) + 2 * h * padded_vocab_size(config)
    return 3.0 * forward
