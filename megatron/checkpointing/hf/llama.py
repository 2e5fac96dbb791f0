"""Our Llama-layout weights <-> Hugging Face ``LlamaForCausalLM`` (grouped-query attention included).

Both sides hold whole tensors (TP merged, vocabulary unpadded). The layouts this relies on are the model's
(megatron/model/attention.py, mlp.py, rotary.py):
- fused QKV rows viewed as [groups, q_per_group + 2, hn, h]: the group's query heads, then its key head, then
  its value head; HF keeps q_proj [heads * hn, h], k_proj and v_proj [groups * hn, h];
- SwiGLU fc1 rows interleave gate and up: row 2j = gate_proj row j, row 2j + 1 = up_proj row j;
- RoPE uses the rotate-half convention on both sides, so q/k rows need no permutation.
"""

from typing import Dict

import torch

Tensors = Dict[str, torch.Tensor]


def check_llama_layout(model) -> None:
    problems = []
    if model.position_embedding_type != "rope":
        problems.append(f"position_embedding_type={model.position_embedding_type!r} (Llama: rope)")
    if model.normalization != "RMSNorm":
        problems.append(f"normalization={model.normalization!r} (Llama: RMSNorm)")
    if not model.swiglu:
        problems.append("swiglu=False (Llama: SwiGLU)")
    if problems:
        raise ValueError("the model does not fit Hugging Face LlamaForCausalLM: " + "; ".join(problems)
                         + ". Export a learned-position/LayerNorm/GELU model as GPT-2 instead")


def hf_config(model, vocab_size: int, eos_token_id=None, bos_token_id=None):
    from transformers import LlamaConfig

    check_llama_layout(model)
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=model.hidden_size, intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers, num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_key_value_heads, head_dim=model.kv_channels,
        max_position_embeddings=model.max_position_embeddings, rms_norm_eps=model.norm_epsilon,
        rope_theta=model.rotary_base, tie_word_embeddings=not model.untie_embeddings_and_output_weights,
        attention_bias=model.add_bias_linear, mlp_bias=model.add_bias_linear, hidden_act="silu",
        attention_dropout=model.attention_dropout, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        architectures=["LlamaForCausalLM"])


def _rope_theta(config: dict) -> float:
    # transformers 5 nests RoPE settings under rope_parameters; 4.x kept rope_theta at the top level.
    parameters = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    if kind not in ("default", None):
        raise ValueError(f"RoPE scaling {kind!r} in the Hugging Face config is not implemented by megatron-ds "
                         f"(plain RoPE only)")
    return float(parameters.get("rope_theta", config.get("rope_theta", 10000.0)))


def model_fields(config: dict) -> dict:
    """ModelConfig fields for a Hugging Face Llama config.json."""
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Llama activation {config['hidden_act']!r} is not SwiGLU's silu")
    if bool(config.get("attention_bias", False)) != bool(config.get("mlp_bias", False)):
        raise ValueError("attention_bias and mlp_bias differ in the Hugging Face config; megatron-ds has one "
                         "switch for both (--disable-bias-linear)")
    heads = config["num_attention_heads"]
    return dict(model_family="llama", num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"],
                num_attention_heads=heads, num_key_value_heads=config.get("num_key_value_heads") or heads,
                kv_channels=config.get("head_dim") or config["hidden_size"] // heads,
                ffn_hidden_size=config["intermediate_size"], seq_length=config["max_position_embeddings"],
                max_position_embeddings=config["max_position_embeddings"], norm_epsilon=config["rms_norm_eps"],
                rotary_base=_rope_theta(config), add_bias_linear=bool(config.get("attention_bias", False)),
                untie_embeddings_and_output_weights=not config.get("tie_word_embeddings", False),
                attention_dropout=config.get("attention_dropout", 0.0), hidden_dropout=0.0)


def _shapes(model):
    heads, groups, head_size = model.num_attention_heads, model.num_key_value_heads, model.kv_channels
    return heads, groups, heads // groups, head_size


def to_hf(weights: Tensors, model) -> Tensors:
    heads, groups, per_group, head_size = _shapes(model)
    hidden, bias = model.hidden_size, model.add_bias_linear
    hf = {"model.embed_tokens.weight": weights["embedding.word_embeddings.weight"],
          "model.norm.weight": weights["final_norm.weight"]}
    if model.untie_embeddings_and_output_weights:
        hf["lm_head.weight"] = weights["output_layer.linear.weight"]
    for i in range(model.num_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        suffixes = ("weight", "bias") if bias else ("weight",)
        for suffix in suffixes:
            trailing = (hidden,) if suffix == "weight" else ()
            qkv = weights[ours + f"self_attention.linear_qkv.{suffix}"].view(groups, per_group + 2, head_size,
                                                                                *trailing)
            hf[theirs + f"self_attn.q_proj.{suffix}"] = qkv[:, :per_group].reshape(heads * head_size, *trailing)
            hf[theirs + f"self_attn.k_proj.{suffix}"] = qkv[:, per_group].reshape(groups * head_size, *trailing)
            hf[theirs + f"self_attn.v_proj.{suffix}"] = qkv[:, per_group + 1].reshape(groups * head_size,
                                                                                    *trailing)
            hf[theirs + f"self_attn.o_proj.{suffix}"] = weights[ours + f"self_attention.linear_proj.{suffix}"]
            if ours + f"mlp.linear_fc1.{suffix}" in weights:  # a dense MLP (mixtral.py maps MoE layers)
                fc1 = weights[ours + f"mlp.linear_fc1.{suffix}"]
                hf[theirs + f"mlp.gate_proj.{suffix}"] = fc1[0::2]
                hf[theirs + f"mlp.up_proj.{suffix}"] = fc1[1::2]
                hf[theirs + f"mlp.down_proj.{suffix}"] = weights[ours + f"mlp.linear_fc2.{suffix}"]
        hf[theirs + "input_layernorm.weight"] = weights[ours + "input_norm.weight"]
        hf[theirs + "post_attention_layernorm.weight"] = weights[ours + "post_attention_norm.weight"]
    return {name: tensor.contiguous() for name, tensor in hf.items()}


def from_hf(hf: Tensors, model) -> Tensors:
    heads, groups, per_group, head_size = _shapes(model)
    hidden, bias = model.hidden_size, model.add_bias_linear
    weights = {"embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
               "final_norm.weight": hf["model.norm.weight"]}
    if model.untie_embeddings_and_output_weights:
        weights["output_layer.linear.weight"] = hf["lm_head.weight"]
    for i in range(model.num_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        for suffix in (("weight", "bias") if bias else ("weight",)):
            trailing = (hidden,) if suffix == "weight" else ()
            query = hf[theirs + f"self_attn.q_proj.{suffix}"].reshape(groups, per_group, head_size, *trailing)
            key = hf[theirs + f"self_attn.k_proj.{suffix}"].reshape(groups, 1, head_size, *trailing)
            value = hf[theirs + f"self_attn.v_proj.{suffix}"].reshape(groups, 1, head_size, *trailing)
            # [groups, q + 2, hn(, h)] -> [(heads + 2 groups) hn(, h)]
            weights[ours + f"self_attention.linear_qkv.{suffix}"] = torch.cat([query, key, value], dim=1).reshape(
                (heads + 2 * groups) * head_size, *trailing)
            weights[ours + f"self_attention.linear_proj.{suffix}"] = hf[theirs + f"self_attn.o_proj.{suffix}"]
            if theirs + f"mlp.gate_proj.{suffix}" in hf:  # a dense MLP (mixtral.py maps MoE layers)
                gate, up = hf[theirs + f"mlp.gate_proj.{suffix}"], hf[theirs + f"mlp.up_proj.{suffix}"]
                # rows interleaved: [ffn, (h)] x 2 -> [ffn, 2, (h)] -> [2 ffn, (h)]
                weights[ours + f"mlp.linear_fc1.{suffix}"] = torch.stack([gate, up], dim=1).reshape(
                    2 * gate.shape[0], *trailing)
                weights[ours + f"mlp.linear_fc2.{suffix}"] = hf[theirs + f"mlp.down_proj.{suffix}"]
        weights[ours + "input_norm.weight"] = hf[theirs + "input_layernorm.weight"]
        weights[ours + "post_attention_norm.weight"] = hf[theirs + "post_attention_layernorm.weight"]
    return {name: tensor.contiguous() for name, tensor in weights.items()}
