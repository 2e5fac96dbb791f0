"""Our TP=1 models against Hugging Face's GPT-2 and Llama with the weights mapped as documented.

This proves the documented layouts that checkpoint conversion relies on: the per-group fused QKV
(attention.py), the row-interleaved SwiGLU fc1 (mlp.py), RoPE's rotate-half convention (rotary.py), the
tanh-approximated GELU and the tied/untied heads.
"""

import torch

from tests.distributed import distributed_test
from tests.model.twins import VOCAB, assert_close, build_model, make_batch, tiny_config


def _hf_llama_from(model, config):
    from transformers import LlamaConfig, LlamaForCausalLM

    heads, groups, hn, h = (config.num_attention_heads, config.num_key_value_heads, config.kv_channels,
                            config.hidden_size)
    per_group = heads // groups
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=config.padded_vocab_size, hidden_size=h, intermediate_size=config.ffn_hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=heads, num_key_value_heads=groups, head_dim=hn,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.norm_epsilon,
        rope_theta=config.rotary_base, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        attn_implementation="eager")).eval()
    state = {"model.embed_tokens.weight": model.embedding.word_embeddings.weight,
             "model.norm.weight": model.final_norm.weight, "lm_head.weight": model.output_layer.weight}
    for i, layer in enumerate(model.layers):
        prefix = f"model.layers.{i}."
        qkv = layer.self_attention.linear_qkv.weight.view(groups, per_group + 2, hn, h)
        fc1 = layer.mlp.linear_fc1.weight
        state.update({
            prefix + "input_layernorm.weight": layer.input_norm.weight,
            prefix + "post_attention_layernorm.weight": layer.post_attention_norm.weight,
            prefix + "self_attn.q_proj.weight": qkv[:, :per_group].reshape(heads * hn, h),
            prefix + "self_attn.k_proj.weight": qkv[:, per_group].reshape(groups * hn, h),
            prefix + "self_attn.v_proj.weight": qkv[:, per_group + 1].reshape(groups * hn, h),
            prefix + "self_attn.o_proj.weight": layer.self_attention.linear_proj.weight,
            prefix + "mlp.gate_proj.weight": fc1[0::2],
            prefix + "mlp.up_proj.weight": fc1[1::2],
            prefix + "mlp.down_proj.weight": layer.mlp.linear_fc2.weight,
        })
    missing, unexpected = hf.load_state_dict({k: v.detach() for k, v in state.items()}, strict=False)
    assert not unexpected and all("rotary" in name for name in missing), (missing, unexpected)
    return hf


def _hf_gpt2_from(model, config):
    from transformers import GPT2Config, GPT2LMHeadModel

    heads, hn, h = config.num_attention_heads, config.kv_channels, config.hidden_size
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=config.padded_vocab_size, n_positions=config.max_position_embeddings, n_embd=h,
        n_layer=config.num_layers, n_head=heads, n_inner=config.ffn_hidden_size, activation_function="gelu_new",
        layer_norm_epsilon=config.norm_epsilon, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        attn_implementation="eager")).eval()
    state = {"transformer.wte.weight": model.embedding.word_embeddings.weight,
             "transformer.wpe.weight": model.embedding.position_embeddings.weight,
             "transformer.ln_f.weight": model.final_norm.weight, "transformer.ln_f.bias": model.final_norm.bias,
             "lm_head.weight": model.embedding.word_embeddings.weight}
    for i, layer in enumerate(model.layers):
        prefix = f"transformer.h.{i}."
        attention, mlp = layer.self_attention, layer.mlp
        # Ours: rows [head g: q_g, k_g, v_g]; HF c_attn (a transposed Conv1D): columns [q | k | v].
        qkv_weight = attention.linear_qkv.weight.view(heads, 3, hn, h).transpose(0, 1).reshape(3 * h, h)
        qkv_bias = attention.linear_qkv.bias.view(heads, 3, hn).transpose(0, 1).reshape(3 * h)
        state.update({
            prefix + "ln_1.weight": layer.input_norm.weight, prefix + "ln_1.bias": layer.input_norm.bias,
            prefix + "ln_2.weight": layer.post_attention_norm.weight,
            prefix + "ln_2.bias": layer.post_attention_norm.bias,
            prefix + "attn.c_attn.weight": qkv_weight.t(), prefix + "attn.c_attn.bias": qkv_bias,
            prefix + "attn.c_proj.weight": attention.linear_proj.weight.t(),
            prefix + "attn.c_proj.bias": attention.linear_proj.bias,
            prefix + "mlp.c_fc.weight": mlp.linear_fc1.weight.t(), prefix + "mlp.c_fc.bias": mlp.linear_fc1.bias,
            prefix + "mlp.c_proj.weight": mlp.linear_fc2.weight.t(), prefix + "mlp.c_proj.bias": mlp.linear_fc2.bias,
        })
    missing, unexpected = hf.load_state_dict({k: v.detach().contiguous() for k, v in state.items()}, strict=False)
    assert not unexpected and all(".attn.bias" in name or ".attn.masked_bias" in name for name in missing), \
        (missing, unexpected)
    return hf


def _compare(family, to_hf):
    config = tiny_config(family)
    model = build_model(config, 1).eval()
    # Non-zero biases and norm parameters, so that their mapping is tested too.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    hf = to_hf(model, config)
    tokens = make_batch()["tokens"]
    with torch.no_grad():
        # Over the real vocabulary: our padding ids' logits are -inf (not classes), HF's table has no padding.
        assert_close(model(tokens)[..., :VOCAB], hf(tokens).logits[..., :VOCAB], f"{family} logits vs Hugging Face",
                     atol=2e-5)


@distributed_test(world_size=1)
def test_llama_matches_hugging_face():
    _compare("llama", _hf_llama_from)


@distributed_test(world_size=1)
def test_gpt2_matches_hugging_face():
    _compare("gpt", _hf_gpt2_from)
