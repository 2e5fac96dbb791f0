"""Ring attention and Ulysses alone equal full attention: outputs and q/k/v gradients within 1e-5 (fp32).

Every rank builds the same full q, k, v and upstream gradient from one seed, computes full attention on the
whole sequence (the serial twin), then runs the parallel op on its own zig-zag tokens only; its outputs and
gradients must equal the twin's rows for those tokens. Causal, document-causal (--reset-attention-mask) and
grouped-query attention are covered.
"""

import pytest
import torch
import torch.nn.functional as F

from megatron.model.context_parallel import ring_attention, ulysses_attention, zigzag_gather, zigzag_shard
from megatron.model.context_parallel.zigzag import zigzag_indices
from tests.distributed import distributed_test

TOLERANCE = 1e-5
SEQ = 32


def _document_ids(batch):
    # Two samples with different document boundaries (EOD at different places), as --reset-attention-mask.
    lengths = [[5, 11, 16], [20, 12]]
    return torch.stack([torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row))
                        for row in lengths[:batch]])


def _reference(query, key, value, documents, causal):
    """Full attention on the whole sequence, written independently of the ops (explicit softmax)."""
    groups = query.size(1) // key.size(1)
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = query @ key.transpose(-1, -2) / query.size(-1) ** 0.5
    allowed = documents[:, None, :, None] == documents[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ value


def _check(op, heads, kv_heads, with_documents, causal=True):
    from megatron.core import comm, parallel_state as ps

    ps.initialize_model_parallel(context_parallel_size=comm.get_world_size())
    cp, rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
    generator = torch.Generator().manual_seed(1234)
    batch, hn = 2, 8
    full = [torch.randn(batch, n, SEQ, hn, generator=generator, dtype=torch.float32)
            for n in (heads, kv_heads, kv_heads)]
    upstream = torch.randn(batch, heads, SEQ, hn, generator=generator)
    documents = _document_ids(batch) if with_documents else torch.zeros(batch, SEQ, dtype=torch.long)

    leaves = [tensor.clone().requires_grad_() for tensor in full]
    expected = _reference(*leaves, documents, causal)
    expected.backward(upstream)

    local = [zigzag_shard(tensor, cp, rank, dim=2).requires_grad_() for tensor in full]
    positions = zigzag_indices(SEQ, cp, rank)
    local_documents = zigzag_shard(documents, cp, rank, dim=1) if with_documents else None
    output = op(*local, positions, local_documents, causal=causal)
    output.backward(zigzag_shard(upstream, cp, rank, dim=2))

    torch.testing.assert_close(output, zigzag_shard(expected.detach(), cp, rank, dim=2), rtol=0, atol=TOLERANCE)
    for name, mine, leaf in zip("qkv", local, leaves):
        torch.testing.assert_close(mine.grad, zigzag_shard(leaf.grad, cp, rank, dim=2), rtol=0, atol=TOLERANCE,
                                   msg=lambda m, name=name: f"d{name}: {m}")


CASES = [pytest.param(8, 8, False, id="mha-causal"), pytest.param(8, 4, True, id="gqa-documents")]


@pytest.mark.parametrize("heads, kv_heads, with_documents", CASES)
@distributed_test(world_size=2)
def test_ring_cp2_equals_full_attention(heads, kv_heads, with_documents):
    _check(ring_attention, heads, kv_heads, with_documents)


@pytest.mark.parametrize("heads, kv_heads, with_documents", CASES)
@distributed_test(world_size=4)
def test_ring_cp4_equals_full_attention(heads, kv_heads, with_documents):
    _check(ring_attention, heads, kv_heads, with_documents)


@pytest.mark.parametrize("heads, kv_heads, with_documents", CASES)
@distributed_test(world_size=2)
def test_ulysses2_equals_full_attention(heads, kv_heads, with_documents):
    _check(ulysses_attention, heads, kv_heads, with_documents)


@pytest.mark.parametrize("heads, kv_heads, with_documents", CASES)
@distributed_test(world_size=4)
def test_ulysses4_equals_full_attention(heads, kv_heads, with_documents):
    _check(ulysses_attention, heads, kv_heads, with_documents)


@distributed_test(world_size=2)
def test_ring_bidirectional_documents_equal_full_attention():
    _check(ring_attention, 4, 2, True, causal=False)


def test_zigzag_pairs_early_and_late_chunks_and_gathers_back():
    assert zigzag_indices(8, 2, 0).tolist() == [0, 1, 6, 7]
    assert zigzag_indices(8, 2, 1).tolist() == [2, 3, 4, 5]
    tokens = torch.arange(24).view(1, 24)
    shards = [zigzag_shard(tokens, 3, rank, dim=1) for rank in range(3)]
    assert torch.equal(zigzag_gather(shards, dim=1), tokens)


def test_zigzag_refuses_a_sequence_not_divisible_by_twice_cp():
    with pytest.raises(ValueError, match=r"sequence length 30 is not divisible by 2 x context-parallel size 4 "
                                         r"= 8; .* choose --seq-length a multiple of 8"):
        zigzag_indices(30, 4, 0)




def test_ring_with_one_rank_is_plain_attention():
    # CP = 1 must not talk to anyone (no self-send) and still give full attention and its gradients.
    generator = torch.Generator().manual_seed(7)
    full = [torch.randn(2, n, SEQ, 8, generator=generator) for n in (4, 2, 2)]
    documents = _document_ids(2)
    leaves = [tensor.clone().requires_grad_() for tensor in full]
    _reference(*leaves, documents, True).sum().backward()
    mine = [tensor.clone().requires_grad_() for tensor in full]
    output = ring_attention(*mine, torch.arange(SEQ), documents, group_ranks=[0], group_index=0)
    output.sum().backward()
    torch.testing.assert_close(output, _reference(*full, documents, True), rtol=0, atol=TOLERANCE)
    for ours, theirs in zip(mine, leaves):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("op", ["ring", "ulysses"])
@distributed_test(world_size=4)
def test_tp2_by_cp2_each_tp_rank_attends_its_heads_over_the_cp_axis(op):
    """TP=2 x CP=2 (the layout Megatron-DeepSpeed refuses for Ulysses): each rank holds its TP rank's heads
    (whole GQA groups) for its CP rank's tokens; the op runs on the context-parallel group of the layout."""
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_model_parallel_size=2, context_parallel_size=2)
    tp, cp = ps.get_tensor_model_parallel_rank(), ps.get_context_parallel_rank()
    generator = torch.Generator().manual_seed(99)
    heads, kv_heads = 8, 4
    full = [torch.randn(2, n, SEQ, 8, generator=generator) for n in (heads, kv_heads, kv_heads)]
    upstream = torch.randn(2, heads, SEQ, 8, generator=generator)
    documents = _document_ids(2)
    leaves = [tensor.clone().requires_grad_() for tensor in full]
    expected = _reference(*leaves, documents, True)
    expected.backward(upstream)

    def mine(tensor, per_tp):
        return zigzag_shard(tensor[:, tp * per_tp:(tp + 1) * per_tp], 2, cp, dim=2)

    local = [mine(tensor, n // 2).requires_grad_() for tensor, n in zip(full, (heads, kv_heads, kv_heads))]
    attention = ring_attention if op == "ring" else ulysses_attention
    output = attention(*local, zigzag_indices(SEQ, 2, cp), zigzag_shard(documents, 2, cp, dim=1))
    output.backward(mine(upstream, heads // 2))
    torch.testing.assert_close(output, mine(expected.detach(), heads // 2), rtol=0, atol=TOLERANCE)
    for ours, leaf, n in zip(local, leaves, (heads, kv_heads, kv_heads)):
        torch.testing.assert_close(ours.grad, mine(leaf.grad, n // 2), rtol=0, atol=TOLERANCE)
