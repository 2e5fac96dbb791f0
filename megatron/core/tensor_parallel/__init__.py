"""Megatron tensor-parallel primitives: mappings, parallel layers, vocab-parallel cross entropy, RNG."""

from megatron.core.tensor_parallel.cross_entropy import mask_vocab_padding_, vocab_parallel_cross_entropy
from megatron.core.tensor_parallel.initialization import (
    declare_init,
    deferred_initialization,
    init_method_constant,
    init_method_normal,
    initialize_parameters,
)
from megatron.core.tensor_parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    linear_with_sharded_weight,
    mark_replicated,
    new_parameter,
    scaled_init_method_normal,
    set_tensor_model_parallel_attributes,
)
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from megatron.core.tensor_parallel.random import (
    get_cuda_rng_tracker,
    get_rng_tracker,
    model_parallel_cuda_manual_seed,
    model_parallel_manual_seed,
    set_random_seed,
)
from megatron.core.tensor_parallel.utils import divide, pad_vocab_size, vocab_range
