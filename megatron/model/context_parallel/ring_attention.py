"""Ring attention: each rank keeps its queries and passes key/value blocks around the context-parallel ring.

At step i rank r holds the K/V block of rank r - i; it attends its queries to that block and merges the
result into a running online softmax (per query row: running max m, normaliser l, unnormalised output), so
no rank ever holds more than two K/V blocks and the result equals softmax over the whole sequence. The
send of the next block is started before computing on the current one, so communication overlaps compute.

The backward pass is a second trip around the ring with FlashAttention's recurrence: the probabilities of a
block are recomputed from the saved log-sum-exp, dQ accumulates locally, and dK/dV accumulate in buffers that
travel with their K/V block and arrive home after one last hop. Both passes issue the same collectives in
the same order on every rank (a fixed schedule), so they cannot deadlock or mismatch.

Grouped-query attention: nq query heads, nkv key/value heads, query head h uses key/value head
h // (nq / nkv) (Megatron-LM's contiguous groups). Attention dropout is not supported (refused in the
configuration).
"""

import math

import torch

from megatron.core import comm
from megatron.model.context_parallel.masks import allowed_pairs


def _ring_exchange(tensors, ranks, index):
    """Start sending ``tensors`` to the next rank of the ring and receiving the previous rank's."""
    size = len(ranks)
    following, preceding = ranks[(index + 1) % size], ranks[(index - 1) % size]
    received = [torch.empty_like(tensor) for tensor in tensors]
    operations = []
    for tensor, buffer in zip(tensors, received):
        operations.append(comm.send_op(tensor, following))
        operations.append(comm.recv_op(buffer, preceding))
    return received, comm.batch_isend_irecv(operations)


def _wait(requests):
    for request in requests:
        request.wait()


def _repeat_heads(tensor, groups):
    return tensor if groups == 1 else tensor.repeat_interleave(groups, dim=1)


def _sum_heads(tensor, groups):
    """Gradient of :func:`_repeat_heads`: sum the query heads of each key/value group."""
    if groups == 1:
        return tensor
    b, heads, s, hn = tensor.shape
    return tensor.view(b, heads // groups, groups, s, hn).sum(dim=2)


class _RingAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, query, key, value, positions, documents, causal, ranks, index):
        groups = query.size(1) // key.size(1)
        scale = 1.0 / math.sqrt(query.size(-1))
        row_max = torch.full(query.shape[:-1], float("-inf"), dtype=query.dtype, device=query.device)
        normaliser = torch.zeros_like(row_max)
        output = torch.zeros_like(query)
        block = torch.stack([key, value])
        block_meta = torch.stack([positions, documents])
        for step in range(len(ranks)):
            requests = []
            if step < len(ranks) - 1:
                (next_block, next_meta), requests = _ring_exchange([block, block_meta], ranks, index)
            allowed = allowed_pairs(positions, block_meta[0], documents, block_meta[1], causal)
            scores = torch.matmul(query, _repeat_heads(block[0], groups).transpose(-1, -2)) * scale
            scores = scores.masked_fill(~allowed, float("-inf"))
            new_max = torch.maximum(row_max, scores.amax(dim=-1))
            # A row that has seen no allowed key yet has max -inf; subtract 0 there so exp() gives 0, not nan.
            safe_max = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
            probabilities = torch.exp(scores - safe_max[..., None])
            correction = torch.exp(row_max - safe_max)
            normaliser = normaliser * correction + probabilities.sum(dim=-1)
            output = output * correction[..., None] + torch.matmul(probabilities,
                                                                   _repeat_heads(block[1], groups))
            row_max = new_max
            _wait(requests)
            if step < len(ranks) - 1:
                block, block_meta = next_block, next_meta
        seen = normaliser > 0
        output = torch.where(seen[..., None], output / torch.where(seen, normaliser, 1.0)[..., None], 0.0)
        log_sum_exp = torch.where(seen, row_max + torch.log(torch.where(seen, normaliser, 1.0)),
                                  float("inf"))  # +inf: exp(score - lse) = 0 for rows that see nothing
        ctx.save_for_backward(query, key, value, positions, documents, output, log_sum_exp)
        ctx.causal, ctx.ranks, ctx.index = causal, ranks, index
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, positions, documents, output, log_sum_exp = ctx.saved_tensors
        ranks, index = ctx.ranks, ctx.index
        groups = query.size(1) // key.size(1)
        scale = 1.0 / math.sqrt(query.size(-1))
        grad_output = grad_output.contiguous()
        delta = (grad_output * output).sum(dim=-1, keepdim=True)  # rowsum(dO * O) = sum_k P dP
        grad_query = torch.zeros_like(query)
        travelling = torch.stack([key, value, torch.zeros_like(key), torch.zeros_like(value)])
        block_meta = torch.stack([positions, documents])
        for step in range(len(ranks)):
            block_key, block_value = travelling[0], travelling[1]
            allowed = allowed_pairs(positions, block_meta[0], documents, block_meta[1], ctx.causal)
            key_rep, value_rep = _repeat_heads(block_key, groups), _repeat_heads(block_value, groups)
            scores = torch.matmul(query, key_rep.transpose(-1, -2)) * scale
            probabilities = torch.exp(scores - log_sum_exp[..., None]).masked_fill(~allowed, 0.0)
            grad_value = _sum_heads(torch.matmul(probabilities.transpose(-1, -2), grad_output), groups)
            grad_probabilities = torch.matmul(grad_output, value_rep.transpose(-1, -2))
            grad_scores = probabilities * (grad_probabilities - delta) * scale
            grad_query = grad_query + torch.matmul(grad_scores, key_rep)
            grad_key = _sum_heads(torch.matmul(grad_scores.transpose(-1, -2), query), groups)
            travelling = torch.stack([block_key, block_value, travelling[2] + grad_key,
                                      travelling[3] + grad_value])
            if len(ranks) == 1:
                break  # CP = 1: the block is this rank's own, its gradients are already home
            if step < len(ranks) - 1:
                (travelling, block_meta), requests = _ring_exchange([travelling, block_meta], ranks, index)
            else:
                # The block held now belongs to the next rank: one more hop takes every dK/dV home.
                (travelling,), requests = _ring_exchange([travelling[2:].contiguous()], ranks, index)
            _wait(requests)
        home = travelling[-2:]  # after the last hop only dK/dV remain; at CP = 1 they sit at index 2, 3
        return grad_query, home[0], home[1], None, None, None, None, None


def ring_attention(query, key, value, positions, documents=None, *, causal=True, group_ranks=None,
                   group_index=None):
    """Attention of this rank's queries over the keys/values of every rank of the ring.

    query [b, nq, s, hn], key/value [b, nkv, s, hn] (this rank's s tokens, any order), positions int [b, s]
    or [s]: the tokens' global positions in the full sequence; documents int [b, s] (or None: one
    document): ids whose equality allows attention (--reset-attention-mask). ``group_ranks`` are the global
    ranks of the ring (default: this rank's context-parallel group), ``group_index`` this rank's place in it.
    Returns [b, nq, s, hn] for this rank's queries.
    """
    if group_ranks is None:
        from megatron.core import parallel_state

        group_ranks = parallel_state.get_context_parallel_global_ranks()
        group_index = parallel_state.get_context_parallel_rank()
    if query.size(1) % key.size(1) != 0:
        raise ValueError(f"{query.size(1)} query heads are not a multiple of {key.size(1)} key/value heads")
    batch, tokens = query.size(0), query.size(2)
    positions = positions.to(torch.long).expand(batch, tokens).contiguous()
    if documents is None:
        documents = torch.zeros_like(positions)
    documents = documents.to(torch.long).expand(batch, tokens).contiguous()
    return _RingAttention.apply(query.contiguous(), key.contiguous(), value.contiguous(), positions,
                                documents, causal, list(group_ranks), group_index)
