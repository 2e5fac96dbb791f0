"""model_flops_per_token against two independent counts, and masked_mean_loss."""

import pytest
import torch

from tests.distributed import distributed_test
from tests.model.twins import build_model, tiny_config


def _flops_from_parameter_count(model, config):
    """6 FLOPs per GEMM weight per token (2 forward + 4 backward) plus the attention GEMMs, 12 L s np hn."""
    gemm_weights = sum(p.numel() for name, p in model.named_parameters()
                       if ".linear_" in name and name.endswith("weight"))
    head = model.output_layer.weight if hasattr(model, "output_layer") else model.embedding.word_embeddings.weight
    attention = 12 * config.num_layers * config.seq_length * config.num_attention_heads * config.kv_channels
    return 6 * (gemm_weights + head.numel()) + attention


def _megatron_closed_form(config):
    """Megatron-LM's num_floating_point_operations, per token."""
    L, h, s, V = config.num_layers, config.hidden_size, config.seq_length, config.padded_vocab_size
    query_ratio = config.num_attention_heads * config.kv_channels / h
    groups = config.num_key_value_heads / config.num_attention_heads
    gated = 1.5 if config.swiglu else 1.0
    return 12 * L * h * h * ((1 + groups + s / h) * query_ratio + config.ffn_hidden_size / h * gated
                             + V / (2 * L * h))


@pytest.mark.parametrize("family", ["gpt", "llama"])
@distributed_test(world_size=1)
def test_model_flops_per_token(family):
    from megatron.model import model_flops_per_token

    # kv_channels differs from hidden / heads, so the formula cannot silently use the wrong one.
    config = tiny_config(family, kv_channels=6)
    model = build_model(config, 1)
    flops = model_flops_per_token(config)
    assert flops == pytest.approx(_flops_from_parameter_count(model, config), rel=1e-12)
    assert flops == pytest.approx(_megatron_closed_form(config), rel=1e-12)
    longer = model_flops_per_token(config, seq_length=4 * config.seq_length)
    extra_attention = 12 * config.num_layers * (3 * config.seq_length) * config.num_attention_heads * 6
    assert longer - flops == pytest.approx(extra_attention)


def test_masked_mean_loss():
    from megatron.model import masked_mean_loss

    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert masked_mean_loss(loss, mask).item() == pytest.approx((1 + 3 + 6) / 3)
    assert masked_mean_loss(loss, torch.zeros(2, 3)).item() == 0.0
