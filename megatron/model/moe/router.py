"""Top-k router: scores, the chosen experts and their weights, capacity drops, load-balancing and z losses.

Losses follow Megatron-LM's definitions. With sequence parallelism a TP rank routes only its slice of the
sequence, so the sums the losses are made of (tokens and probabilities per expert, logsumexp squares) are
summed over the TP group first: every TP rank then holds the loss of the whole micro-batch, as the serial
model does.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core import comm
from megatron.core.tensor_parallel import init_method_normal
from megatron.core.tensor_parallel.layers import mark_replicated, new_parameter
from megatron.model.moe.collectives import sum_over


@dataclass
class Routing:
    experts: torch.Tensor       # [T, k] expert ids
    weights: torch.Tensor       # [T, k] combine weights (0 where the slot was dropped)
    kept: torch.Tensor          # [T, k] bool, False where capacity dropped the slot
    aux_loss: torch.Tensor      # scalar, already multiplied by its coefficient
    z_loss: torch.Tensor        # scalar, already multiplied by its coefficient


def expert_capacity(tokens: int, topk: int, experts: int, factor: float, minimum: int) -> int:
    """Slots per expert for ``tokens`` local tokens: ceil(factor * tokens * topk / experts), at least minimum."""
    return max(int(math.ceil(factor * tokens * topk / experts)), minimum)


def capacity_mask(experts: torch.Tensor, weights: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """[T, k] bool: per expert, keep the ``capacity`` slots of highest weight (ties: lower token index)."""
    tokens, topk = experts.shape
    flat_experts, flat_weights = experts.reshape(-1), weights.detach().reshape(-1)
    # Sort key: expert first, then weight descending, then position; rank within the expert decides.
    order = torch.argsort(-flat_weights, stable=True)
    order = order[torch.argsort(flat_experts[order], stable=True)]
    counts = torch.bincount(flat_experts, minlength=num_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_expert = torch.empty_like(order)
    rank_in_expert[order] = torch.arange(order.numel()) - starts[flat_experts[order]]
    return (rank_in_expert < capacity).view(tokens, topk)


class Router(nn.Module):
    """logits = x W^T with W [experts, hidden], replicated over TP (its gradient is summed over TP under
    sequence parallelism)."""

    def __init__(self, hidden_size: int, moe, init_method_std: float, *, sequence_parallel: bool,
                 params_dtype: torch.dtype):
        super().__init__()
        self.num_experts, self.topk = moe.experts, moe.moe_router_topk
        self.score_function, self.pre_softmax = moe.moe_router_score_function, moe.moe_router_pre_softmax
        self.balancing, self.aux_coeff, self.z_coeff = (moe.moe_router_load_balancing_type, moe.moe_aux_loss_coeff,
                                                        moe.moe_z_loss_coeff)
        self.capacity_factor, self.eval_capacity_factor = moe.moe_expert_capacity_factor, moe.moe_eval_capacity_factor
        self.min_capacity = moe.moe_min_capacity
        self.weight = new_parameter((self.num_experts, hidden_size), init_method_normal(init_method_std), params_dtype)
        mark_replicated(self.weight, sequence_parallel)
        self.bias_update_rate = moe.moe_router_bias_update_rate
        if not moe.moe_router_enable_expert_bias:
            self.score_bias: Optional[torch.Tensor] = None
        else:
            # A buffer, not a parameter: moved by update_expert_bias, saved with the module's state. Not named
            # "expert_bias": DeepSpeed saves every MoE-module key containing "expert" as a routed expert.
            self.register_buffer("score_bias", torch.zeros(self.num_experts, dtype=torch.float32))
            # Slots routed to each expert since the last update (this rank's tokens; not saved: updates happen
            # at step ends, where checkpoints are taken, so it is zero there).
            self.register_buffer("load_since_update", torch.zeros(self.num_experts), persistent=False)

    def capacity(self, tokens: int) -> Optional[int]:
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        if factor is None:
            return None
        return expert_capacity(tokens, self.topk, self.num_experts, factor, self.min_capacity)

    def _scores(self, logits: torch.Tensor):
        """(top-k ids, their weights, scores over all experts for the balancing loss)."""
        if self.score_bias is not None:
            return self._biased_scores(logits)
        if self.score_function == "sigmoid":
            scores = torch.sigmoid(logits)
            top, experts = torch.topk(scores, self.topk, dim=-1)
            weights = top / top.sum(-1, keepdim=True) if self.topk > 1 else top
            return experts, weights, scores / scores.sum(-1, keepdim=True)
        probs = torch.softmax(logits, dim=-1)
        if self.pre_softmax:
            weights, experts = torch.topk(probs, self.topk, dim=-1)
        else:
            top_logits, experts = torch.topk(logits, self.topk, dim=-1)
            weights = torch.softmax(top_logits, dim=-1)
        return experts, weights, probs

    def _biased_scores(self, logits: torch.Tensor):
        """The same weights as _scores, but the experts chosen by score + score_bias."""
        scores = torch.sigmoid(logits) if self.score_function == "sigmoid" else torch.softmax(logits, dim=-1)
        _, experts = torch.topk(scores + self.score_bias, self.topk, dim=-1)
        top = scores.gather(-1, experts)
        renormalise = self.topk > 1 if self.score_function == "sigmoid" else not self.pre_softmax
        weights = top / top.sum(-1, keepdim=True) if renormalise else top
        balancing = scores / scores.sum(-1, keepdim=True) if self.score_function == "sigmoid" else scores
        return experts, weights, balancing

    @torch.no_grad()
    def update_expert_bias(self, load_groups) -> None:
        """bias += rate * sign(mean load - load), the load summed over every group of ``load_groups`` (so over
        the whole batch: every rank then moves its bias the same way)."""
        load = self.load_since_update.clone()
        for group in load_groups:
            if group is not None and comm.get_world_size(group) > 1:
                comm.all_reduce(load, group=group)
        self.score_bias.add_(self.bias_update_rate * torch.sign(load.mean() - load))
        self.load_since_update.zero_()

    def forward(self, hidden: torch.Tensor, batch_size: int, loss_group=None) -> Routing:
        """hidden [T, h] with T = s_local * b tokens in [s, b] order; loss_group: the TP group under sequence
        parallelism (None otherwise)."""
        logits = F.linear(hidden.float(), self.weight.float())                     # [T, E]
        experts, weights, scores = self._scores(logits)
        kept = torch.ones_like(experts, dtype=torch.bool)
        capacity = self.capacity(hidden.shape[0])
        if capacity is not None:
            kept = capacity_mask(experts, weights, self.num_experts, capacity)
            weights = weights * kept
        if self.score_bias is not None and self.training:
            with torch.no_grad():
                self.load_since_update += torch.bincount(experts.reshape(-1), minlength=self.num_experts)
        zero = logits.new_zeros(())
        aux = self._balancing_loss(experts, scores, batch_size, loss_group) if self.training and self.aux_coeff \
            and self.balancing != "none" else zero
        z = self._z_loss(logits, loss_group) if self.training and self.z_coeff else zero
        return Routing(experts, weights, kept, aux, z)

    def _balancing_loss(self, experts, scores, batch_size, loss_group):
        # counts / score sums per (group of tokens, expert): one group per micro-batch or per sequence.
        tokens = experts.shape[0]
        one_hot = F.one_hot(experts, self.num_experts).sum(1).float()              # [T, E]
        if self.balancing == "seq_aux_loss":
            counts = one_hot.view(tokens // batch_size, batch_size, -1).sum(0)     # [b, E]
            prob_sums = scores.view(tokens // batch_size, batch_size, -1).sum(0)
            group_tokens = torch.full((batch_size, 1), float(tokens // batch_size))
        else:
            counts, prob_sums = one_hot.sum(0, keepdim=True), scores.sum(0, keepdim=True)
            group_tokens = torch.full((1, 1), float(tokens))
        counts = sum_over(counts, loss_group)
        prob_sums = sum_over(prob_sums, loss_group)
        group_tokens = sum_over(group_tokens, loss_group)
        per_group = (counts * prob_sums).sum(-1, keepdim=True) / (group_tokens * group_tokens * self.topk)
        return self.aux_coeff * self.num_experts * per_group.mean()

    def _z_loss(self, logits, loss_group):
        squares = torch.logsumexp(logits, dim=-1).pow(2)
        total = sum_over(squares.sum().view(1), loss_group)
        count = sum_over(torch.full((1,), float(logits.shape[0])), loss_group)
        return self.z_coeff * (total / count)[0]
