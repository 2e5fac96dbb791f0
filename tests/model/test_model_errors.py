"""Configurations a user can get wrong fail at construction with a ValueError that names the values."""

import deepspeed
import pytest
import torch

from tests.distributed import distributed_test
from tests.model.twins import build_model, make_batch, tiny_config


@pytest.mark.parametrize("overrides, message", [
    (dict(num_attention_heads=3, num_key_value_heads=3, kv_channels=8),
     r"number of attention heads \(num_attention_heads\) 3 is not divisible by the tensor-model-parallel size 2"),
    (dict(num_attention_heads=8, num_key_value_heads=1), r"number of key/value heads \(num_key_value_heads\) 1 "
                                                         r"is not divisible by the tensor-model-parallel size 2"),
    (dict(ffn_hidden_size=33), r"MLP hidden size \(ffn_hidden_size\) 33 is not divisible by the "
                               r"tensor-model-parallel size 2"),
    (dict(num_attention_heads=8, num_key_value_heads=3), r"num_attention_heads 8 is not a multiple of "
                                                         r"num_key_value_heads 3"),
    (dict(hidden_size=16), r"ffn_hidden_size is unset .* pass --ffn-hidden-size"),
    (dict(seq_length=32, max_position_embeddings=16), r"max_position_embeddings 16 is shorter than seq_length 32"),
])
@distributed_test(world_size=2)
def test_shapes_that_do_not_divide_over_tp(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(tiny_config("llama", **overrides), 2)


@distributed_test(world_size=4)
def test_tp4_cannot_split_two_key_value_groups():
    with pytest.raises(ValueError, match=r"key/value heads \(num_key_value_heads\) 2 is not divisible by the "
                                         r"tensor-model-parallel size 4"):
        build_model(tiny_config("llama", num_key_value_heads=2), 4)


@pytest.mark.parametrize("model_kwargs, message", [
    (dict(sequence_parallel=True, recompute_granularity="full", partition_activations=True),
     "partition_activations cannot be combined with sequence_parallel"),
    (dict(recompute_granularity="selective", partition_activations=True),
     "partition_activations needs recompute_granularity='full'"),
    (dict(recompute_granularity="layers"), "recompute_granularity 'layers' is not one of"),
])
@distributed_test(world_size=2)
def test_recompute_settings_that_cannot_work(model_kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(tiny_config("gpt"), 2, **model_kwargs)


@distributed_test(world_size=2)
def test_selective_recompute_refuses_partitioned_activations_configured_in_deepspeed():
    # The model was told nothing, but DeepSpeed was configured to partition: its q/k/v differ across ranks.
    from megatron.core import parallel_state as ps

    model = build_model(tiny_config("gpt"), 2, recompute_granularity="selective")
    deepspeed.checkpointing.configure(ps.get_deepspeed_mpu(), partition_activations=True)
    with pytest.raises(ValueError, match="inputs differ across tensor-parallel ranks"):
        model(make_batch()["tokens"])


@distributed_test(world_size=2)
def test_sequence_parallel_needs_a_divisible_sequence():
    with pytest.raises(ValueError, match="seq_length 15 is not divisible by 2"):
        build_model(tiny_config("gpt", seq_length=15), 2, sequence_parallel=True)


@distributed_test(world_size=1)
def test_transformer_engine_on_cpu_is_refused():
    with pytest.raises(ValueError, match="use_transformer_engine needs an NVIDIA GPU.*drop --use-transformer-engine"):
        build_model(tiny_config("llama", use_transformer_engine=True), 1)


@distributed_test(world_size=1)
def test_tied_head_without_embedding_stage_is_refused():
    with pytest.raises(ValueError, match="cannot hold a head tied to it"):
        build_model(tiny_config("gpt"), 1, pre_process=False)


@distributed_test(world_size=1)
def test_missing_vocabulary_is_refused():
    from megatron.config.model import ModelConfig

    config = ModelConfig(num_layers=1, hidden_size=8, num_attention_heads=2, seq_length=4)
    with pytest.raises(ValueError, match="neither vocab_size nor padded_vocab_size"):
        build_model(config, 1)


def test_loss_mask_of_another_shape_is_refused():
    from megatron.model import masked_mean_loss

    with pytest.raises(ValueError, match=r"loss_mask shape \(2, 3\) differs from the per-token loss shape \(3, 2\)"):
        masked_mean_loss(torch.ones(3, 2), torch.ones(2, 3))
