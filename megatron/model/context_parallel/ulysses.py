"""DeepSpeed-Ulysses attention: all-to-all from sequence shards to head shards, local attention, and back.

Before attention each of the U ranks holds all (TP-local) heads of s/U tokens; one all-to-all gives it 1/U
of the heads for all s tokens, attention runs locally on whole sequences, and a second all-to-all restores
the sequence split. The backward of each all-to-all is the opposite all-to-all. Heads are split into U
contiguous blocks, so query block j and key/value block j hold matching grouped-query groups: this needs
nq and nkv (per TP rank) divisible by U, which the configuration checks.

Tokens may be in any order on any rank (zig-zag included): the mask comes from the gathered global
positions and document ids, not from the tokens' order.
"""

import torch
import torch.nn.functional as F

from megatron.core import comm
from megatron.model.context_parallel.masks import allowed_pairs


def _sequence_to_heads(tensor, group, size):
    """[b, n, s/U, hn] on every rank -> [b, n/U, s, hn] (head block = rank, sequence in rank order)."""
    b, heads, tokens, hn = tensor.shape
    send = tensor.reshape(b, size, heads // size, tokens, hn).transpose(0, 1).contiguous()
    received = torch.empty_like(send)  # [source rank, b, n/U, s/U, hn]
    comm.all_to_all_single(received, send, group=group)
    return received.permute(1, 2, 0, 3, 4).reshape(b, heads // size, size * tokens, hn)


def _heads_to_sequence(tensor, group, size):
    """Inverse of :func:`_sequence_to_heads`: [b, n/U, s, hn] -> [b, n, s/U, hn]."""
    b, heads, tokens, hn = tensor.shape
    send = tensor.reshape(b, heads, size, tokens // size, hn).permute(2, 0, 1, 3, 4).contiguous()
    received = torch.empty_like(send)  # [head block, b, n/U, s/U, hn]
    comm.all_to_all_single(received, send, group=group)
    return received.transpose(0, 1).reshape(b, size * heads, tokens // size, hn)


class _SequenceToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group, size):
        ctx.group, ctx.size = group, size
        return _sequence_to_heads(tensor, group, size)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_sequence(grad.contiguous(), ctx.group, ctx.size), None, None


class _HeadsToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group, size):
        ctx.group, ctx.size = group, size
        return _heads_to_sequence(tensor, group, size)

    @staticmethod
    def backward(ctx, grad):
        return _sequence_to_heads(grad.contiguous(), ctx.group, ctx.size), None, None


def _gather_sequence(tensor, group, size):
    """int [b, s/U] from every rank -> [b, s] in rank order (the order :func:`_sequence_to_heads` uses)."""
    batch, tokens = tensor.shape
    gathered = torch.empty(size * batch, tokens, dtype=tensor.dtype, device=tensor.device)
    comm.all_gather_into_tensor(gathered, tensor.contiguous(), group=group)  # gloo wants a flat dim 0
    return gathered.view(size, batch, tokens).transpose(0, 1).reshape(batch, size * tokens)


def ulysses_attention(query, key, value, positions, documents=None, *, causal=True, group=None):
    """Attention over the whole sequence for tokens split across the Ulysses group.

    Shapes and arguments as :func:`megatron.model.context_parallel.ring_attention.ring_attention`; ``group``
    defaults to this rank's context-parallel group.
    """
    if group is None:
        from megatron.core import parallel_state

        group = parallel_state.get_context_parallel_group()
    size = comm.get_world_size(group)
    if query.size(1) % size or key.size(1) % size:
        raise ValueError(f"Ulysses degree {size} must divide the query heads ({query.size(1)}) and key/value "
                         f"heads ({key.size(1)}) of this tensor-parallel rank")
    batch, tokens = query.size(0), query.size(2)
    documents_given = documents is not None
    positions = positions.to(torch.long).expand(batch, tokens).contiguous()
    documents = (torch.zeros_like(positions) if documents is None
                 else documents.to(torch.long).expand(batch, tokens).contiguous())
    all_positions = _gather_sequence(positions, group, size)
    all_documents = _gather_sequence(documents, group, size)
    query, key, value = (_SequenceToHeads.apply(tensor.contiguous(), group, size)
                         for tensor in (query, key, value))
    gqa = {"enable_gqa": True} if query.size(1) != key.size(1) else {}
    if documents_given or not causal:
        allowed = allowed_pairs(all_positions, all_positions, all_documents, all_documents, causal)
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, **gqa)
    else:
        # Plain causal: put the tokens in position order and use SDPA's causal kernel, which keeps O(s)
        # activations instead of an [s, s] mask (global positions are the same for every sample).
        order = torch.argsort(all_positions[0])
        query, key, value = (tensor.index_select(2, order) for tensor in (query, key, value))
        context = F.scaled_dot_product_attention(query, key, value, is_causal=True, **gqa)
        context = context.index_select(2, torch.argsort(order))
    return _HeadsToSequence.apply(context, group, size)
