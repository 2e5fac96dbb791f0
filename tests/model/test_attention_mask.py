"""Packed documents with a document-causal mask and reset position ids (--reset-attention-mask,
--reset-position-ids) give each document exactly the logits it gets when run alone."""

import pytest
import torch

from tests.distributed import distributed_test
from tests.model.twins import SEQ, VOCAB, assert_close, build_model, make_batch, tiny_config

DOCUMENT_LENGTHS = [[6, 10], [10, 6]]   # per sample, summing to SEQ; even, so TP=2 can split each


def document_causal_mask_and_positions(lengths_per_sample):
    """Megatron's convention: bool [b, 1, s, s], True = masked out; positions restart at each document."""
    masks, positions = [], []
    for lengths in lengths_per_sample:
        document = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))   # [s]
        causal = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
        allowed = causal & (document.unsqueeze(0) == document.unsqueeze(1))
        masks.append(~allowed)
        positions.append(torch.cat([torch.arange(n) for n in lengths]))
    return torch.stack(masks).unsqueeze(1), torch.stack(positions)


def _packed_equals_separate(family, tp, sequence_parallel):
    config = tiny_config(family)
    model = build_model(config, tp, sequence_parallel=sequence_parallel).eval()
    tokens = make_batch()["tokens"]
    mask, positions = document_causal_mask_and_positions(DOCUMENT_LENGTHS)
    with torch.no_grad():
        packed = model(tokens, positions, mask)                  # [b, s, V/tp]
        for sample, lengths in enumerate(DOCUMENT_LENGTHS):
            start = 0
            for length in lengths:
                alone = model(tokens[sample:sample + 1, start:start + length])
                assert_close(packed[sample:sample + 1, start:start + length], alone,
                             f"sample {sample}, document at {start}")
                start += length
        # The mask is the whole rule: a mask that is just causal equals the is_causal fast path.
        causal_mask = ~torch.ones(SEQ, SEQ, dtype=torch.bool).tril().expand(tokens.size(0), 1, SEQ, SEQ)
        assert_close(model(tokens, attention_mask=causal_mask), model(tokens), "explicit causal mask")
        # Compared over the whole real vocabulary (a TP rank may hold only padding ids, whose logits are -inf).
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region as gather

        change = gather(packed)[..., :VOCAB] - gather(model(tokens))[..., :VOCAB]
    assert change.abs().max() > 1e-3, "the document mask changed nothing"


@pytest.mark.parametrize("family", ["gpt", "llama"])
@distributed_test(world_size=1)
def test_document_mask_serial(family):
    _packed_equals_separate(family, 1, sequence_parallel=False)


@pytest.mark.parametrize("sequence_parallel", [False, True])
@pytest.mark.parametrize("family", ["gpt", "llama"])
@distributed_test(world_size=2)
def test_document_mask_tp2(family, sequence_parallel):
    _packed_equals_separate(family, 2, sequence_parallel)


@distributed_test(world_size=1)
def test_float_mask_is_refused():
    model = build_model(tiny_config("gpt"), 1)
    tokens = make_batch()["tokens"]
    with pytest.raises(ValueError, match="bool tensor with True where attention is masked out"):
        model(tokens, attention_mask=torch.ones(1, 1, SEQ, SEQ))
