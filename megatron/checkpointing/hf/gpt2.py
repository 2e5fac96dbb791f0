"""Our GPT-2-layout weights <-> Hugging Face ``GPT2LMHeadModel``.

Both sides hold whole tensors (TP merged, vocabulary unpadded). Differences, all documented by the model
(megatron/model/attention.py, mlp.py):
- HF's attention/MLP projections are ``Conv1D`` modules: their weights are the transpose of ours ([in, out]).
- Our fused QKV rows are per head ``[q_h, k_h, v_h]`` (the per-group layout with one head per group); HF's
  ``c_attn`` columns are ``[all q | all k | all v]``.
- GELU is the tanh approximation on both sides (HF ``gelu_new``).
"""

from typing import Dict

import torch

Tensors = Dict[str, torch.Tensor]


def check_gpt2_layout(model) -> None:
    """A ValueError naming what does not fit GPT2LMHeadModel."""
    problems = []
    if model.position_embedding_type != "learned_absolute":
        problems.append(f"position_embedding_type={model.position_embedding_type!r} (GPT-2: learned_absolute)")
    if model.normalization != "LayerNorm":
        problems.append(f"normalization={model.normalization!r} (GPT-2: LayerNorm)")
    if model.swiglu:
        problems.append("swiglu=True (GPT-2: GELU)")
    if not model.add_bias_linear:
        problems.append("add_bias_linear=False (GPT-2 has biases)")
    if model.num_key_value_heads != model.num_attention_heads:
        problems.append(f"num_key_value_heads={model.num_key_value_heads} != num_attention_heads (GPT-2 has no GQA)")
    if model.kv_channels * model.num_attention_heads != model.hidden_size:
        problems.append(f"kv_channels={model.kv_channels} x heads != hidden_size={model.hidden_size}")
    if problems:
        raise ValueError("the model does not fit Hugging Face GPT2LMHeadModel: " + "; ".join(problems)
                         + ". Export a rope/RMSNorm/SwiGLU model as Llama instead")


def hf_config(model, vocab_size: int, eos_token_id=None):
    from transformers import GPT2Config

    check_gpt2_layout(model)
    return GPT2Config(
        vocab_size=vocab_size, n_positions=model.max_position_embeddings, n_embd=model.hidden_size,
        n_layer=model.num_layers, n_head=model.num_attention_heads, n_inner=model.ffn_hidden_size,
        activation_function="gelu_new", layer_norm_epsilon=model.norm_epsilon, resid_pdrop=model.hidden_dropout,
        embd_pdrop=model.hidden_dropout, attn_pdrop=model.attention_dropout,
        tie_word_embeddings=not model.untie_embeddings_and_output_weights,
        bos_token_id=eos_token_id, eos_token_id=eos_token_id, architectures=["GPT2LMHeadModel"])


def model_fields(config: dict) -> dict:
    """ModelConfig fields for a Hugging Face GPT-2 config.json."""
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 activation {config['activation_function']!r} is not the tanh GELU megatron-ds "
                         f"implements (gelu_new)")
    hidden = config["n_embd"]
    return dict(model_family="gpt", num_layers=config["n_layer"], hidden_size=hidden,
                num_attention_heads=config["n_head"], ffn_hidden_size=config.get("n_inner") or 4 * hidden,
                seq_length=config["n_positions"], max_position_embeddings=config["n_positions"],
                norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
                untie_embeddings_and_output_weights=not config.get("tie_word_embeddings", True),
                hidden_dropout=config.get("resid_pdrop", 0.1), attention_dropout=config.get("attn_pdrop", 0.1))


def _layer_pairs(i):
    ours, theirs = f"layers.{i}.", f"transformer.h.{i}."
    return [(ours + "input_norm.weight", theirs + "ln_1.weight"), (ours + "input_norm.bias", theirs + "ln_1.bias"),
            (ours + "post_attention_norm.weight", theirs + "ln_2.weight"),
            (ours + "post_attention_norm.bias", theirs + "ln_2.bias"),
            (ours + "self_attention.linear_proj.bias", theirs + "attn.c_proj.bias"),
            (ours + "mlp.linear_fc1.bias", theirs + "mlp.c_fc.bias"),
            (ours + "mlp.linear_fc2.bias", theirs + "mlp.c_proj.bias")]


def _transposed_pairs(i):
    ours, theirs = f"layers.{i}.", f"transformer.h.{i}."
    return [(ours + "self_attention.linear_proj.weight", theirs + "attn.c_proj.weight"),
            (ours + "mlp.linear_fc1.weight", theirs + "mlp.c_fc.weight"),
            (ours + "mlp.linear_fc2.weight", theirs + "mlp.c_proj.weight")]


def to_hf(weights: Tensors, model) -> Tensors:
    heads, head_size, hidden = model.num_attention_heads, model.kv_channels, model.hidden_size
    hf = {"transformer.wte.weight": weights["embedding.word_embeddings.weight"],
          "transformer.wpe.weight": weights["embedding.position_embeddings.weight"],
          "transformer.ln_f.weight": weights["final_norm.weight"], "transformer.ln_f.bias": weights["final_norm.bias"]}
    if model.untie_embeddings_and_output_weights:
        hf["lm_head.weight"] = weights["output_layer.linear.weight"]
    for i in range(model.num_layers):
        prefix = f"layers.{i}.self_attention.linear_qkv."
        # [heads * 3 * hn, h] -> [heads, 3, hn, h] -> [3, heads, hn, h] -> [3h, h] -> Conv1D [h, 3h]
        qkv = weights[prefix + "weight"].view(heads, 3, head_size, hidden).transpose(0, 1).reshape(3 * hidden, hidden)
        bias = weights[prefix + "bias"].view(heads, 3, head_size).transpose(0, 1).reshape(3 * hidden)
        hf[f"transformer.h.{i}.attn.c_attn.weight"] = qkv.t()
        hf[f"transformer.h.{i}.attn.c_attn.bias"] = bias
        hf.update({theirs: weights[ours] for ours, theirs in _layer_pairs(i)})
        hf.update({theirs: weights[ours].t() for ours, theirs in _transposed_pairs(i)})
    return {name: tensor.contiguous() for name, tensor in hf.items()}


def from_hf(hf: Tensors, model) -> Tensors:
    heads, head_size, hidden = model.num_attention_heads, model.kv_channels, model.hidden_size
    weights = {"embedding.word_embeddings.weight": hf["transformer.wte.weight"],
               "embedding.position_embeddings.weight": hf["transformer.wpe.weight"],
               "final_norm.weight": hf["transformer.ln_f.weight"], "final_norm.bias": hf["transformer.ln_f.bias"]}
    if model.untie_embeddings_and_output_weights:
        weights["output_layer.linear.weight"] = hf["lm_head.weight"]
    for i in range(model.num_layers):
        prefix = f"layers.{i}.self_attention.linear_qkv."
        # Conv1D [h, 3h] -> [3h, h] -> [3, heads, hn, h] -> [heads, 3, hn, h] -> [heads * 3 * hn, h]
        qkv = hf[f"transformer.h.{i}.attn.c_attn.weight"].t().reshape(3, heads, head_size, hidden)
        weights[prefix + "weight"] = qkv.transpose(0, 1).reshape(3 * hidden, hidden)
        bias = hf[f"transformer.h.{i}.attn.c_attn.bias"].view(3, heads, head_size)
        weights[prefix + "bias"] = bias.transpose(0, 1).reshape(3 * hidden)
        weights.update({ours: hf[theirs] for ours, theirs in _layer_pairs(i)})
        weights.update({ours: hf[theirs].t() for ours, theirs in _transposed_pairs(i)})
    return {name: tensor.contiguous() for name, tensor in weights.items()}
