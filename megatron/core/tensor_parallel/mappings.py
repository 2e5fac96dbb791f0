"""Autograd-aware movements of activations into and out of the tensor-parallel (TP) region.

Each forward collective is paired with its adjoint in backward, so a layer composed of these stays exact
under autograd:

    copy_to_tensor_model_parallel_region        fwd identity        bwd all-reduce
    reduce_from_tensor_model_parallel_region    fwd all-reduce      bwd identity
    scatter_to_tensor_model_parallel_region     fwd split last dim  bwd all-gather last dim
    gather_from_tensor_model_parallel_region    fwd all-gather last bwd split last dim
    scatter_to_sequence_parallel_region         fwd split dim 0     bwd all-gather dim 0
    gather_from_sequence_parallel_region        fwd all-gather dim0 bwd reduce-scatter dim 0 (or split)
    reduce_scatter_to_sequence_parallel_region  fwd reduce-scatter  bwd all-gather dim 0

Sequence-parallel tensors are sequence-first ([s, b, h]) so that dim 0 is the sequence.
"""

import torch

from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.utils import split_along_dim


def _tp_world():
    return ps.get_tensor_model_parallel_world_size()


def _all_reduce(input_):
    if _tp_world() == 1:
        return input_
    input_ = input_.contiguous()
    comm.all_reduce(input_, group=ps.get_tensor_model_parallel_group())
    return input_


def _split_last_dim(input_):
    world = _tp_world()
    if world == 1:
        return input_
    return split_along_dim(input_, world, dim=-1)[ps.get_tensor_model_parallel_rank()].contiguous()


def _gather_along_dim(input_, dim):
    world = _tp_world()
    if world == 1:
        return input_
    # all_gather_into_tensor stacks along dim 0: gather there, then move the stacked chunks to `dim`.
    moved = input_.movedim(dim, 0).contiguous()
    output = torch.empty((world * moved.size(0),) + tuple(moved.shape[1:]), dtype=input_.dtype, device=input_.device)
    comm.all_gather_into_tensor(output, moved, group=ps.get_tensor_model_parallel_group())
    return output.movedim(0, dim).contiguous()


def _split_first_dim(input_):
    world = _tp_world()
    if world == 1:
        return input_
    return split_along_dim(input_, world, dim=0)[ps.get_tensor_model_parallel_rank()].contiguous()


def _reduce_scatter_first_dim(input_):
    world = _tp_world()
    if world == 1:
        return input_
    if input_.size(0) % world != 0:
        raise ValueError(f"sequence length {input_.size(0)} is not divisible by the tensor-model-parallel size "
                         f"{world}; sequence parallelism needs --seq-length divisible by TP")
    output = torch.empty((input_.size(0) // world,) + tuple(input_.shape[1:]), dtype=input_.dtype,
                         device=input_.device)
    comm.reduce_scatter_tensor(output, input_.contiguous(), group=ps.get_tensor_model_parallel_group())
    return output


class _CopyToModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return input_

    @staticmethod
    def backward(ctx, grad_output):
        return _all_reduce(grad_output)


class _ReduceFromModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return _all_reduce(input_)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


class _ScatterToModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return _split_last_dim(input_)

    @staticmethod
    def backward(ctx, grad_output):
        return _gather_along_dim(grad_output, -1)


class _GatherFromModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return _gather_along_dim(input_, -1)

    @staticmethod
    def backward(ctx, grad_output):
        return _split_last_dim(grad_output)


class _ScatterToSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return _split_first_dim(input_)

    @staticmethod
    def backward(ctx, grad_output):
        return _gather_along_dim(grad_output, 0)


class _GatherFromSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_, tensor_parallel_output_grad):
        ctx.tensor_parallel_output_grad = tensor_parallel_output_grad
        return _gather_along_dim(input_, 0)

    @staticmethod
    def backward(ctx, grad_output):
        # When the gathered tensor feeds TP-sharded compute (a column-parallel GEMM), each rank holds a
        # partial gradient of the full sequence that must be summed; when it feeds replicated compute, every
        # rank already holds the full gradient and only needs its own chunk.
        if ctx.tensor_parallel_output_grad:
            return _reduce_scatter_first_dim(grad_output), None
        return _split_first_dim(grad_output), None


class _ReduceScatterToSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return _reduce_scatter_first_dim(input_)

    @staticmethod
    def backward(ctx, grad_output):
        return _gather_along_dim(grad_output, 0)


def copy_to_tensor_model_parallel_region(input_):
    return _CopyToModelParallelRegion.apply(input_)


def reduce_from_tensor_model_parallel_region(input_):
    return _ReduceFromModelParallelRegion.apply(input_)


def scatter_to_tensor_model_parallel_region(input_):
    return _ScatterToModelParallelRegion.apply(input_)


def gather_from_tensor_model_parallel_region(input_):
    return _GatherFromModelParallelRegion.apply(input_)


def scatter_to_sequence_parallel_region(input_):
    return _ScatterToSequenceParallelRegion.apply(input_)


def gather_from_sequence_parallel_region(input_, tensor_parallel_output_grad=True):
    return _GatherFromSequenceParallelRegion.apply(input_, tensor_parallel_output_grad)


def reduce_scatter_to_sequence_parallel_region(input_):
    return _ReduceScatterToSequenceParallelRegion.apply(input_)
