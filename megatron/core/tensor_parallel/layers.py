"""Tensor-parallel layers: column-, row- and vocab-parallel, with Megatron-LM's semantics.

Weights are created full-size and then sliced, so the same seed gives the same full weights for every TP size
(a TP=2 model equals its TP=1 twin). Every parameter declares its initialisation where it is created
(initialization.py: a model fills them by name, a layer built alone draws from the default RNG), and each
sharded parameter declares its sharding once, in the attributes DeepSpeed and our checkpoint code read:

    tensor_model_parallel  True for sharded parameters (DeepSpeed's grad-norm accounting reads it)
    partition_dim          the dimension split across TP ranks (0: column / vocab, 1: row)
    partition_stride       1 (kept for DeepSpeed / Megatron compatibility)
    sharding               "column" | "row" | "vocab" | "replicated" (used by checkpoint reshaping)
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from megatron.core.tensor_parallel.initialization import (
    InitMethod,
    InitSpec,
    draws_at_construction,
    init_method_constant,
    init_method_normal,
    initial_shard,
)
from megatron.core.tensor_parallel.utils import divide, vocab_range


def scaled_init_method_normal(std: float, num_layers: int) -> InitMethod:
    """GPT-2's residual-branch init: std / sqrt(2 * num_layers) for output projections."""
    return init_method_normal(std / math.sqrt(2.0 * num_layers))


def set_tensor_model_parallel_attributes(param: torch.Tensor, sharding: str, partition_dim: int):
    param.tensor_model_parallel = True
    param.partition_dim = partition_dim
    param.partition_stride = 1
    param.sharding = sharding


def mark_replicated(param: torch.Tensor, sequence_parallel: bool = False):
    """Declare a parameter replicated across TP ranks.

    Under sequence parallelism each TP rank sees only its slice of the sequence, so the gradient of a
    replicated parameter applied there (norm weights, row-parallel bias) is partial: a hook sums it over
    the TP group as soon as it is computed, before DeepSpeed accumulates or reduces it. The hook runs inside
    backward, so it is correct for every ZeRO stage and gradient accumulation.
    """
    param.tensor_model_parallel = False
    param.sharding = "replicated"
    param.sequence_parallel = sequence_parallel
    if sequence_parallel and ps.get_tensor_model_parallel_world_size() > 1:
        def _sum_over_tensor_parallel_ranks(grad):
            grad = grad.clone()
            comm.all_reduce(grad, group=ps.get_tensor_model_parallel_group())
            return grad
        param.register_hook(_sum_over_tensor_parallel_ranks)


def new_parameter(full_shape, init_method: InitMethod, dtype: torch.dtype, partition_dim: Optional[int] = None,
                  drawn_rows: Optional[int] = None) -> nn.Parameter:
    """This TP rank's slice (along ``partition_dim``; all of it when None) of a ``full_shape`` parameter, with its
    initialisation declared. Every parameter of the model is made here or declares its init itself."""
    spec = InitSpec(init_method, tuple(full_shape), partition_dim, drawn_rows)
    if draws_at_construction():
        value = initial_shard(spec).to(dtype).contiguous()
    else:  # a model builder fills it by name (initialize_parameters)
        shape = list(full_shape)
        if partition_dim is not None:
            shape[partition_dim] = divide(shape[partition_dim], ps.get_tensor_model_parallel_world_size(),
                                          "a tensor-parallel parameter dimension")
        value = torch.empty(shape, dtype=dtype)
    param = nn.Parameter(value)
    param.init_spec = spec
    return param


def _sharded_parameter(full_shape, partition_dim, init_method, dtype, sharding, drawn_rows=None):
    param = new_parameter(full_shape, init_method, dtype, partition_dim, drawn_rows)
    set_tensor_model_parallel_attributes(param, sharding, partition_dim)
    return param


def _bias(size, dtype):
    return new_parameter((size,), init_method_constant(0.0), dtype)


class ColumnParallelLinear(nn.Module):
    """Y = X A + b with A split by columns: A = [A_1, ..., A_p]; rank i computes Y_i = X A_i + b_i.

    Args:
        gather_output: all-gather Y_i into the full Y (otherwise the output stays TP-sharded on the last dim).
        sequence_parallel: the input is sequence-sharded [s/p, b, h]; it is all-gathered along the sequence
            before the GEMM and its gradient reduce-scattered back.
        skip_bias_add: return (Y without bias, bias) so the caller can fuse the bias into a later op.
    """

    def __init__(self, input_size: int, output_size: int, *, bias: bool = True, gather_output: bool = False,
                 init_method: InitMethod = init_method_normal(0.02), sequence_parallel: bool = False,
                 skip_bias_add: bool = False, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        world = ps.get_tensor_model_parallel_world_size()
        self.input_size, self.output_size = input_size, output_size
        self.output_size_per_partition = divide(output_size, world, "output size of a column-parallel layer")
        self.gather_output = gather_output
        self.sequence_parallel = sequence_parallel and world > 1
        self.skip_bias_add = skip_bias_add
        if self.sequence_parallel and gather_output:
            raise ValueError("ColumnParallelLinear: gather_output=True cannot be combined with sequence_parallel")
        # Weight layout is [out, in] as in nn.Linear, so partition_dim 0 splits the output columns of A.
        self.weight = _sharded_parameter((output_size, input_size), 0, init_method, params_dtype, "column")
        if bias:
            self.bias = new_parameter((output_size,), init_method_constant(0.0), params_dtype, partition_dim=0)
            set_tensor_model_parallel_attributes(self.bias, "column", 0)
        else:
            self.register_parameter("bias", None)

    def forward(self, input_: torch.Tensor):
        if self.sequence_parallel:
            input_parallel = gather_from_sequence_parallel_region(input_, tensor_parallel_output_grad=True)
        else:
            input_parallel = copy_to_tensor_model_parallel_region(input_)
        bias = None if self.skip_bias_add else self.bias
        output_parallel = F.linear(input_parallel, self.weight, bias)
        output = gather_from_tensor_model_parallel_region(output_parallel) if self.gather_output else output_parallel
        if self.skip_bias_add:
            return output, self.bias
        return output


class RowParallelLinear(nn.Module):
    """Y = X A + b with A split by rows and X by columns: Y = sum_i X_i A_i + b.

    Args:
        input_is_parallel: the input is already split on its last dim (the output of a ColumnParallelLinear);
            otherwise it is scattered here.
        sequence_parallel: reduce-scatter the partial sums along the sequence (dim 0) instead of all-reducing,
            leaving a sequence-sharded [s/p, b, h] output.
        skip_bias_add: return (Y without bias, bias).
    """

    def __init__(self, input_size: int, output_size: int, *, bias: bool = True, input_is_parallel: bool = False,
                 init_method: InitMethod = init_method_normal(0.02), sequence_parallel: bool = False,
                 skip_bias_add: bool = False, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        world = ps.get_tensor_model_parallel_world_size()
        self.input_size, self.output_size = input_size, output_size
        self.input_size_per_partition = divide(input_size, world, "input size of a row-parallel layer")
        self.input_is_parallel = input_is_parallel
        self.sequence_parallel = sequence_parallel and world > 1
        self.skip_bias_add = skip_bias_add
        if self.sequence_parallel and not input_is_parallel:
            raise ValueError("RowParallelLinear: sequence_parallel requires input_is_parallel=True")
        self.weight = _sharded_parameter((output_size, input_size), 1, init_method, params_dtype, "row")
        if bias:
            # The bias is added once, after the reduction, so it is replicated across TP ranks.
            self.bias = _bias(output_size, params_dtype)
            mark_replicated(self.bias, sequence_parallel=self.sequence_parallel)
        else:
            self.register_parameter("bias", None)

    def forward(self, input_: torch.Tensor):
        input_parallel = input_ if self.input_is_parallel else scatter_to_tensor_model_parallel_region(input_)
        output_parallel = F.linear(input_parallel, self.weight)
        if self.sequence_parallel:
            output = reduce_scatter_to_sequence_parallel_region(output_parallel)
        else:
            output = reduce_from_tensor_model_parallel_region(output_parallel)
        if self.skip_bias_add:
            return output, self.bias
        return output + self.bias if self.bias is not None else output


class VocabParallelEmbedding(nn.Module):
    """Embedding table split along the vocabulary: rank i owns rows [i*V/p, (i+1)*V/p).

    Each rank looks up the ids it owns (zeros elsewhere) and the partial results are summed over TP.
    ``num_embeddings`` must already be padded to a multiple of the TP size (see ``pad_vocab_size``);
    ``vocab_size`` (default: all of them) is the real vocabulary: only its rows are drawn, padding rows are zero.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *,
                 init_method: InitMethod = init_method_normal(0.02), params_dtype: torch.dtype = torch.float32,
                 vocab_size: Optional[int] = None):
        super().__init__()
        world, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.vocab_start_index, self.vocab_end_index = vocab_range(num_embeddings, rank, world)
        self.weight = _sharded_parameter((num_embeddings, embedding_dim), 0, init_method, params_dtype, "vocab",
                                         drawn_rows=vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if ps.get_tensor_model_parallel_world_size() > 1:
            outside = (input_ids < self.vocab_start_index) | (input_ids >= self.vocab_end_index)
            local_ids = (input_ids - self.vocab_start_index).masked_fill(outside, 0)
            output_parallel = F.embedding(local_ids, self.weight)
            output_parallel = output_parallel.masked_fill(outside.unsqueeze(-1), 0.0)
        else:
            output_parallel = F.embedding(input_ids, self.weight)
        return reduce_from_tensor_model_parallel_region(output_parallel)


def linear_with_sharded_weight(input_: torch.Tensor, weight: torch.Tensor, sequence_parallel: bool = False,
                               bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Column-parallel GEMM against an existing vocab-sharded weight (the LM head tied to the embedding)."""
    if sequence_parallel and ps.get_tensor_model_parallel_world_size() > 1:
        input_parallel = gather_from_sequence_parallel_region(input_, tensor_parallel_output_grad=True)
    else:
        input_parallel = copy_to_tensor_model_parallel_region(input_)
    return F.linear(input_parallel, weight, bias)
