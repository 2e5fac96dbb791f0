"""Shared pieces of the model tests: tiny GPT/Llama configs, a fixed batch, and the TP-vs-serial comparison.

A "twin" is the same model built from the same seed at another tensor-parallel size (or with another
recomputation setting). Gradients are compared shard by shard using each parameter's declared sharding:
a TP-sharded parameter must equal its chunk of the TP=1 gradient along ``partition_dim``, a replicated one
the whole TP=1 gradient.
"""

from typing import Dict, Optional

import torch

from megatron.config.model import FAMILY_PRESETS, ModelConfig

ATOL = 1e-5
VOCAB = 100
SEQ = 16
BATCH = 2


def tiny_config(family: str, **overrides) -> ModelConfig:
    """2 layers, hidden 32, seq 16, vocab 100 at the default padding (--make-vocab-size-divisible-by 128:
    128 rows at TP=1, 256 at TP=2, 512 at TP=4; build_model pads for its TP size), no dropout unless
    overridden."""
    fields = dict(FAMILY_PRESETS[family], model_family=family, num_layers=2, hidden_size=32, seq_length=SEQ,
                  num_attention_heads=4 if family == "gpt" else 8, attention_dropout=0.0, hidden_dropout=0.0)
    if family == "llama":
        fields["num_key_value_heads"] = 2
    fields.update(overrides)
    return ModelConfig(**fields).with_vocab(VOCAB)


def make_batch(seed: int = 7, batch: int = BATCH, seq: int = SEQ) -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (batch, seq), generator=generator)
    labels = torch.randint(0, VOCAB, (batch, seq), generator=generator)
    loss_mask = (torch.rand(batch, seq, generator=generator) > 0.2).float()
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask}


def build_model(config, tp: int, seed: int = 1234, **model_kwargs):
    """(Re)initialise the TP groups at ``tp`` and build GPTModel from ``seed``, its vocabulary padded as a
    run at that TP size pads it."""
    import dataclasses

    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import model_parallel_manual_seed
    from megatron.model import GPTModel

    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp)
    model_parallel_manual_seed(seed)
    if config.vocab_size is not None:
        config = dataclasses.replace(config, padded_vocab_size=None).with_vocab(config.vocab_size, tp)
    return GPTModel(config, init_seed=seed, **model_kwargs)


def loss_and_grads(model, batch, position_ids=None, attention_mask=None):
    """Masked mean loss of one forward/backward and every parameter's gradient, by name."""
    from megatron.model import masked_mean_loss

    per_token = model(batch["tokens"], position_ids, attention_mask, labels=batch["labels"])
    assert per_token.shape == batch["tokens"].shape
    loss = masked_mean_loss(per_token, batch["loss_mask"])
    loss.backward()
    grads = {name: param.grad.detach().clone() for name, param in model.named_parameters()}
    assert all(grad is not None for grad in grads.values())
    return loss.detach(), grads


def assert_close(actual, expected, what, atol=ATOL):
    """Max abs error <= atol; equal infinities (the -inf logits of vocabulary padding) count as equal."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.float(), expected.float()
    error = torch.where(actual == expected, 0.0, (actual - expected).abs()).max().item()
    assert error <= atol, f"{what}: max abs error {error:.3e} > {atol}"


def shard_of(full: torch.Tensor, param, tp: int, rank: int) -> torch.Tensor:
    """The part of a TP=1 tensor that ``param`` holds on TP rank ``rank``, from its declared sharding.

    Vocabulary tables are padded per TP size; the extra padding rows of a larger TP size are zero.
    """
    if getattr(param, "sharding", None) == "vocab":
        padded_rows = param.shape[0] * tp
        full = torch.cat([full, full.new_zeros(padded_rows - full.shape[0], *full.shape[1:])])
    if getattr(param, "tensor_model_parallel", False):
        return full.chunk(tp, dim=param.partition_dim)[rank]
    return full


def assert_grads_match(sharded_model, sharded_grads, serial_grads, tp: int, rank: int, atol=ATOL):
    assert sharded_grads.keys() == serial_grads.keys()
    for name, param in sharded_model.named_parameters():
        expected = shard_of(serial_grads[name], param, tp, rank)
        assert_close(sharded_grads[name], expected, f"grad of {name}", atol)


def run_parity(family: str, tp: int, config_overrides: Optional[dict] = None, **model_kwargs):
    """Loss and every gradient of the TP=``tp`` model equal those of its TP=1 twin on the same batch."""
    from megatron.core import parallel_state as ps

    config = tiny_config(family, **(config_overrides or {}))
    batch = make_batch()
    sharded = build_model(config, tp, **model_kwargs)
    rank = ps.get_tensor_model_parallel_rank()
    sharded_loss, sharded_grads = loss_and_grads(sharded, batch)
    serial_kwargs = {k: v for k, v in model_kwargs.items() if k != "sequence_parallel"}
    serial = build_model(config, 1, **serial_kwargs)
    serial_loss, serial_grads = loss_and_grads(serial, batch)
    for name, param in sharded.named_parameters():
        weight = shard_of(dict(serial.named_parameters())[name].detach(), param, tp, rank)
        assert_close(param.detach(), weight, f"initial {name}", atol=0.0)
    assert_close(sharded_loss, serial_loss, "loss")
    assert_grads_match(sharded, sharded_grads, serial_grads, tp, rank)
    return sharded_loss
