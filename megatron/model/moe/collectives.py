"""Differentiable collectives over an arbitrary group (the expert-parallel one), through megatron.core.comm.

Each forward's backward is its adjoint: all-to-all with swapped splits, all-gather <-> reduce-scatter.
"""

from typing import List, Optional

import torch

from megatron.core import comm


def _all_to_all(input_: torch.Tensor, output_splits: List[int], input_splits: List[int], group) -> torch.Tensor:
    output = input_.new_empty((sum(output_splits),) + tuple(input_.shape[1:]))
    comm.all_to_all_single(output, input_.contiguous(), output_split_sizes=output_splits,
                           input_split_sizes=input_splits, group=group)
    return output


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_, output_splits, input_splits, group):
        ctx.splits, ctx.group = (output_splits, input_splits), group
        return _all_to_all(input_, output_splits, input_splits, group)

    @staticmethod
    def backward(ctx, grad_output):
        output_splits, input_splits = ctx.splits
        return _all_to_all(grad_output, input_splits, output_splits, ctx.group), None, None, None


def all_to_all(input_: torch.Tensor, output_splits: List[int], input_splits: List[int], group) -> torch.Tensor:
    """Rows [sum(input_splits), ...] -> rows [sum(output_splits), ...]; chunk i goes to / comes from rank i."""
    return _AllToAll.apply(input_, list(output_splits), list(input_splits), group)


def exchange_counts(counts: torch.Tensor, group) -> torch.Tensor:
    """counts [world, n] (row r: what this rank sends to rank r) -> [world, n] (row r: what rank r sends here)."""
    received = torch.empty_like(counts)
    comm.all_to_all_single(received, counts.contiguous(), group=group)
    return received


def _gather(input_: torch.Tensor, group) -> torch.Tensor:
    world = comm.get_world_size(group)
    output = input_.new_empty((world * input_.shape[0],) + tuple(input_.shape[1:]))
    comm.all_gather_into_tensor(output, input_.contiguous(), group=group)
    return output


def _reduce_scatter(input_: torch.Tensor, group) -> torch.Tensor:
    world = comm.get_world_size(group)
    output = input_.new_empty((input_.shape[0] // world,) + tuple(input_.shape[1:]))
    comm.reduce_scatter_tensor(output, input_.contiguous(), group=group)
    return output


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_, group):
        ctx.group = group
        return _gather(input_, group)

    @staticmethod
    def backward(ctx, grad_output):
        return _reduce_scatter(grad_output, ctx.group), None


class _ReduceScatterRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_, group):
        ctx.group = group
        return _reduce_scatter(input_, group)

    @staticmethod
    def backward(ctx, grad_output):
        return _gather(grad_output, ctx.group), None


def gather_rows(input_: torch.Tensor, group) -> torch.Tensor:
    """Concatenate every rank's equally long dim 0; backward sums and keeps this rank's rows."""
    return _GatherRows.apply(input_, group)


def reduce_scatter_rows(input_: torch.Tensor, group) -> torch.Tensor:
    """Sum over ranks, keep this rank's dim-0 chunk; backward gathers."""
    return _ReduceScatterRows.apply(input_, group)


class _SumOver(torch.autograd.Function):
    """All-reduce sum whose backward is the identity: for values every rank then uses identically (a loss
    replicated over the group), each rank's share of the gradient flows back through its own inputs."""

    @staticmethod
    def forward(ctx, input_, group):
        output = input_.clone()
        comm.all_reduce(output, group=group)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


def sum_over(input_: torch.Tensor, group: Optional[object]) -> torch.Tensor:
    if group is None or comm.get_world_size(group) == 1:
        return input_
    return _SumOver.apply(input_, group)
