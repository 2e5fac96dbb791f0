"""Token dispatchers: move routed token copies to the ranks holding their experts and the results back.

Experts are spread over the expert-parallel (EP) group in contiguous blocks: rank r holds experts
[r * E/EP, (r + 1) * E/EP). Both dispatchers return, for each local token, sum_k weight_k * expert_k(token).

- alltoall: each rank sorts its (token, expert) slots by expert and sends every rank exactly the rows for its
  experts (uneven all-to-all), runs its experts, and sends results back along the reverse path.
- allgather: every rank gathers all tokens of the EP group, runs its experts on the slots routed to them and
  reduce-scatters the weighted sums back (more traffic, no data-dependent splits).
"""

from typing import Dict, Optional

import torch

from megatron.core import comm
from megatron.model.moe.collectives import all_to_all, exchange_counts, gather_rows, reduce_scatter_rows
from megatron.model.moe.experts import LocalExperts
from megatron.model.moe.router import Routing


def _slots(routing: Routing):
    """Kept (token, expert, weight) slots sorted by expert (stable: token order inside an expert)."""
    tokens, topk = routing.experts.shape
    token_ids = torch.arange(tokens).repeat_interleave(topk)
    experts, weights, kept = routing.experts.reshape(-1), routing.weights.reshape(-1), routing.kept.reshape(-1)
    token_ids, experts, weights = token_ids[kept], experts[kept], weights[kept]
    order = torch.argsort(experts, stable=True)
    return token_ids[order], experts[order], weights[order]


class AllToAllDispatcher:
    def __init__(self, num_experts: int, group, pad_to_capacity: bool):
        self.num_experts, self.group, self.pad_to_capacity = num_experts, group, pad_to_capacity
        self.world = comm.get_world_size(group) if group is not None else 1
        self.sent_bytes = 0     # bytes sent to other ranks by the last forward, dispatch + combine (benchmarks)

    def __call__(self, hidden: torch.Tensor, routing: Routing, experts: LocalExperts,
                 capacity: Optional[int]) -> torch.Tensor:
        token_ids, slot_experts, weights = _slots(routing)
        counts = torch.bincount(slot_experts, minlength=self.num_experts)            # [E]
        rows = hidden[token_ids]                                                      # [N, h]
        pad_to = capacity * self.world if self.pad_to_capacity and capacity is not None else None
        if self.world == 1:
            out_rows = experts(rows, counts.tolist(), pad_to)
        else:
            local = self.num_experts // self.world
            send = counts.view(self.world, local)
            received = exchange_counts(send, self.group)                              # [EP, local]
            input_splits, output_splits = send.sum(1).tolist(), received.sum(1).tolist()
            mine = comm.get_rank(self.group)
            # Rows leaving this rank: the dispatch, then the results returned to their owners (the combine).
            off_rank = sum(input_splits) - input_splits[mine] + sum(output_splits) - output_splits[mine]
            self.sent_bytes = off_rank * hidden.shape[-1] * hidden.element_size()
            arrived = all_to_all(rows, output_splits, input_splits, self.group)       # by source, then expert
            row_expert = torch.arange(local).repeat(self.world).repeat_interleave(received.reshape(-1))
            regroup = torch.argsort(row_expert, stable=True)
            results = experts(arrived[regroup], received.sum(0).tolist(), pad_to)
            back = torch.empty_like(results)
            back[regroup] = results
            out_rows = all_to_all(back, input_splits, output_splits, self.group)
        output = hidden.new_zeros(hidden.shape)
        return output.index_add(0, token_ids, out_rows * weights.unsqueeze(-1).to(out_rows.dtype))


class AllGatherDispatcher:
    def __init__(self, num_experts: int, group, pad_to_capacity: bool):
        self.num_experts, self.group, self.pad_to_capacity = num_experts, group, pad_to_capacity
        self.world = comm.get_world_size(group) if group is not None else 1
        self.sent_bytes = 0

    def __call__(self, hidden, routing: Routing, experts: LocalExperts, capacity: Optional[int]):
        if self.world > 1:
            hidden_all = gather_rows(hidden, self.group)
            routing = Routing(_gather_plain(routing.experts, self.group), gather_rows(routing.weights, self.group),
                              _gather_plain(routing.kept, self.group), routing.aux_loss, routing.z_loss)
            self.sent_bytes = hidden.numel() * hidden.element_size() * (self.world - 1)
        else:
            hidden_all = hidden
        token_ids, slot_experts, weights = _slots(routing)
        mine = (slot_experts >= experts.first) & (slot_experts < experts.first + experts.count)
        token_ids, slot_experts, weights = token_ids[mine], slot_experts[mine], weights[mine]
        counts = torch.bincount(slot_experts - experts.first, minlength=experts.count).tolist()
        pad_to = capacity * self.world if self.pad_to_capacity and capacity is not None else None
        out_rows = experts(hidden_all[token_ids], counts, pad_to)
        output = hidden_all.new_zeros(hidden_all.shape).index_add(
            0, token_ids, out_rows * weights.unsqueeze(-1).to(out_rows.dtype))
        return reduce_scatter_rows(output, self.group) if self.world > 1 else output


def _gather_plain(tensor: torch.Tensor, group) -> torch.Tensor:
    as_int = tensor.to(torch.int64)
    out = as_int.new_empty((comm.get_world_size(group) * as_int.shape[0],) + tuple(as_int.shape[1:]))
    comm.all_gather_into_tensor(out, as_int.contiguous(), group=group)
    return out.to(tensor.dtype)


DISPATCHERS: Dict[str, type] = {"alltoall": AllToAllDispatcher, "allgather": AllGatherDispatcher}
