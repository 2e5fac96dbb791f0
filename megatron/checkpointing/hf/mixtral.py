"""Our Mixtral-family weights (Llama attention + MoE MLPs) <-> Hugging Face ``MixtralForCausalLM``.

Attention, norms and embeddings are Llama's (llama.py). Files use Mixtral's published names, which
transformers 5 still writes and reads (it fuses the experts into 3-D tensors only in memory):
- router ``mlp.router.weight`` [E, h] = ``block_sparse_moe.gate.weight``;
- expert e's fc1 rows interleave gate and up (row 2j gate j, 2j + 1 up j): gate = ``experts.e.w1``, up = ``w3``;
- expert e's fc2 [h, ffn] = ``experts.e.w2``.
Import also reads the fused in-memory names (``mlp.experts.gate_up_proj`` [E, 2 ffn, h]: all gate rows, then
all up rows; ``mlp.experts.down_proj`` [E, h, ffn]), should a file hold them.
Routing: HF takes softmax over all experts, the top k, then renormalises them; our default router (softmax
over the k chosen logits) gives the same experts and weights. Configurations HF cannot express are refused.
"""

from typing import Dict

import torch

from megatron.checkpointing.hf import llama

Tensors = Dict[str, torch.Tensor]
EXPERT = "mlp.deepspeed_moe.experts.deepspeed_experts.{}."


def check_mixtral_layout(model, moe) -> None:
    llama.check_llama_layout(model)
    problems = []
    if moe.moe_layer_freq != 1:
        problems.append(f"--moe-layer-freq {moe.moe_layer_freq} (Mixtral: every layer is MoE)")
    if moe.moe_router_score_function != "softmax" or moe.moe_router_pre_softmax:
        problems.append("a sigmoid or pre-softmax router (Mixtral renormalises the softmax of the top k)")
    if moe.moe_expert_capacity_factor is not None:
        problems.append("a capacity factor (Mixtral is dropless)")
    if moe.moe_shared_expert_intermediate_size:
        problems.append("a shared expert")
    if model.add_bias_linear:
        problems.append("linear biases (Mixtral has none)")
    if moe.moe_router_enable_expert_bias:
        problems.append("a router expert bias (Mixtral has none)")
    if problems:
        raise ValueError("the MoE model does not fit Hugging Face MixtralForCausalLM: " + "; ".join(problems))


def hf_config(model, moe, vocab_size: int, eos_token_id=None, bos_token_id=None):
    from transformers import MixtralConfig

    check_mixtral_layout(model, moe)
    return MixtralConfig(
        vocab_size=vocab_size, hidden_size=model.hidden_size,
        intermediate_size=moe.moe_ffn_hidden_size or model.ffn_hidden_size, num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads, num_key_value_heads=model.num_key_value_heads,
        head_dim=model.kv_channels, max_position_embeddings=model.max_position_embeddings,
        rms_norm_eps=model.norm_epsilon, rope_theta=model.rotary_base,
        tie_word_embeddings=not model.untie_embeddings_and_output_weights, hidden_act="silu",
        num_local_experts=moe.experts, num_experts_per_tok=moe.moe_router_topk,
        router_aux_loss_coef=moe.moe_aux_loss_coeff, attention_dropout=model.attention_dropout,
        sliding_window=None, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        architectures=["MixtralForCausalLM"])


def model_fields(config: dict) -> dict:
    """Flat RunConfig values (model + MoE) for a Hugging Face Mixtral config.json."""
    window = config.get("sliding_window")
    if window is not None and window < config["max_position_embeddings"]:
        raise ValueError(f"sliding_window={window} in the Hugging Face config: sliding-window attention is not "
                         f"implemented by megatron-ds")
    if config.get("router_jitter_noise", 0.0):
        raise ValueError("router_jitter_noise > 0 in the Hugging Face config is not implemented by megatron-ds "
                         "(set it to 0)")
    fields = llama.model_fields(dict(config, attention_bias=False, mlp_bias=False))
    fields.update(model_family="mixtral", num_experts=(config["num_local_experts"],),
                  moe_router_topk=config["num_experts_per_tok"],
                  moe_aux_loss_coeff=float(config.get("router_aux_loss_coef", 0.0)))
    return fields


def to_hf(weights: Tensors, model) -> Tensors:
    hf = llama.to_hf(weights, model)
    for i in range(model.num_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}.block_sparse_moe."
        router = weights[ours + "mlp.router.weight"]
        hf[theirs + "gate.weight"] = router.contiguous()
        for e in range(router.shape[0]):
            fc1 = weights[ours + EXPERT.format(e) + "linear_fc1.weight"]
            hf[theirs + f"experts.{e}.w1.weight"] = fc1[0::2].contiguous()
            hf[theirs + f"experts.{e}.w3.weight"] = fc1[1::2].contiguous()
            hf[theirs + f"experts.{e}.w2.weight"] = weights[ours + EXPERT.format(e) + "linear_fc2.weight"]
    return hf


def _experts_of_layer(hf: Tensors, layer: str):
    """[(gate, up, down)] per expert of one layer, from the published or the fused names."""
    if layer + "mlp.experts.gate_up_proj" in hf:
        gate_up, down = hf[layer + "mlp.experts.gate_up_proj"], hf[layer + "mlp.experts.down_proj"]
        return hf[layer + "mlp.gate.weight"], [(*gate_up[e].chunk(2), down[e]) for e in range(gate_up.shape[0])]
    prefix = layer + "block_sparse_moe."
    router = hf[prefix + "gate.weight"]
    return router, [tuple(hf[prefix + f"experts.{e}.{w}.weight"] for w in ("w1", "w3", "w2"))
                    for e in range(router.shape[0])]


def from_hf(hf: Tensors, model) -> Tensors:
    weights = llama.from_hf(hf, model)
    for i in range(model.num_layers):
        ours = f"layers.{i}."
        router, experts = _experts_of_layer(hf, f"model.layers.{i}.")
        weights[ours + "mlp.router.weight"] = router.contiguous()
        for e, (gate, up, down) in enumerate(experts):
            # rows interleaved: [ffn, h] x 2 -> [ffn, 2, h] -> [2 ffn, h]
            weights[ours + EXPERT.format(e) + "linear_fc1.weight"] = torch.stack([gate, up], dim=1).reshape(
                2 * gate.shape[0], gate.shape[1]).contiguous()
            weights[ours + EXPERT.format(e) + "linear_fc2.weight"] = down.contiguous()
    return weights
