"""Process groups of the model-parallel grid: the one place in megatron-ds that knows ranks.

``initialize_model_parallel(tp, pp, expert_model_parallel_size=ep)`` builds every group once; getters use
Megatron-LM's names so code written against Megatron's ``parallel_state`` keeps working. The rank order is
documented in :mod:`megatron.core.parallel_layout`. :func:`get_deepspeed_mpu` returns the object handed to
``deepspeed.initialize(mpu=...)`` and ``deepspeed.checkpointing.configure(mpu)``.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from megatron.core import comm
from megatron.core.parallel_layout import ParallelLayout


@dataclass
class _Groups:
    layout: ParallelLayout
    rank: int
    # For each axis: this rank's process group and the global ranks in it.
    groups: Dict[str, object] = field(default_factory=dict)
    ranks: Dict[str, List[int]] = field(default_factory=dict)
    virtual_pipeline_model_parallel_size: Optional[int] = None
    virtual_pipeline_model_parallel_rank: Optional[int] = None


_STATE: Optional[_Groups] = None

_AXES = {
    "tensor": ParallelLayout.tensor_parallel_groups,
    "context": ParallelLayout.context_parallel_groups,
    "data": ParallelLayout.data_parallel_groups,
    "data_context": ParallelLayout.data_context_parallel_groups,
    "pipeline": ParallelLayout.pipeline_parallel_groups,
    "model": ParallelLayout.model_parallel_groups,
    "embedding": ParallelLayout.embedding_groups,
    "position_embedding": ParallelLayout.position_embedding_groups,
    "expert": ParallelLayout.expert_parallel_groups,
    "expert_data": ParallelLayout.expert_data_parallel_groups,
}


def initialize_model_parallel(tensor_model_parallel_size: int = 1,
                              pipeline_model_parallel_size: int = 1,
                              virtual_pipeline_model_parallel_size: Optional[int] = None,
                              expert_model_parallel_size: int = 1,
                              context_parallel_size: int = 1) -> ParallelLayout:
    """Create the TP, CP, DP, DP x CP, PP, model-parallel (TP x PP), embedding and expert groups on every rank.

    Must be called by all ranks with the same arguments after ``comm.init_distributed()``.
    """
    global _STATE
    if _STATE is not None:
        current = _STATE.layout
        raise ValueError(
            f"model parallel groups are already initialized ({current.describe()}); call "
            f"parallel_state.destroy_model_parallel() before initializing again with "
            f"TP {tensor_model_parallel_size}, PP {pipeline_model_parallel_size}, EP {expert_model_parallel_size}")
    if not comm.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call megatron.core.comm.init_distributed() first")
    if virtual_pipeline_model_parallel_size is not None and pipeline_model_parallel_size < 2:
        raise ValueError(f"virtual pipeline stages ({virtual_pipeline_model_parallel_size}) need a pipeline-model-"
                         f"parallel size of at least 2, got {pipeline_model_parallel_size}")
    layout = ParallelLayout(comm.get_world_size(), tensor_model_parallel_size, pipeline_model_parallel_size,
                            expert_model_parallel_size, context_parallel_size)
    state = _Groups(layout=layout, rank=comm.get_rank(),
                    virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
                    virtual_pipeline_model_parallel_rank=0 if virtual_pipeline_model_parallel_size else None)
    for axis, enumerate_groups in _AXES.items():
        if axis == "data_context" and layout.context_parallel_size == 1:
            # DP x CP is DP itself: share the group rather than create a twin of every data-parallel group.
            state.groups[axis], state.ranks[axis] = state.groups["data"], state.ranks["data"]
            continue
        for ranks in enumerate_groups(layout):
            # Every rank must call new_group for every group, in the same order, even groups it is not in.
            group = comm.new_group(ranks)
            if state.rank in ranks:
                state.groups[axis], state.ranks[axis] = group, ranks
    _STATE = state
    return layout


def model_parallel_is_initialized() -> bool:
    return _STATE is not None


def destroy_model_parallel():
    """Forget (and free) every group so that initialize_model_parallel may be called again."""
    global _STATE
    if _STATE is None:
        return
    freed = set()
    for group in _STATE.groups.values():
        if id(group) not in freed and group is not None:
            freed.add(id(group))
            comm.destroy_group(group)
    _STATE = None


def _state() -> _Groups:
    if _STATE is None:
        raise RuntimeError("model parallel groups are not initialized: call "
                           "megatron.core.parallel_state.initialize_model_parallel() first")
    return _STATE


def get_layout() -> ParallelLayout:
    return _state().layout


def _group(axis):
    # None where this rank belongs to no group of the axis (a middle pipeline stage has no embedding group).
    return _state().groups.get(axis)


def _rank_in(axis) -> int:
    state = _state()
    return state.ranks[axis].index(state.rank)


def _size_of(axis) -> int:
    return len(_state().ranks[axis])


# Tensor-model-parallel group (also the sequence-parallel group of Megatron's sequence parallelism).
def get_tensor_model_parallel_group():
    return _group("tensor")


def get_tensor_model_parallel_world_size() -> int:
    return _size_of("tensor")


def get_tensor_model_parallel_rank() -> int:
    return _rank_in("tensor")


def get_tensor_model_parallel_src_rank() -> int:
    """Global rank of TP rank 0 in this rank's TP group (the broadcast source for TP-replicated data)."""
    return _state().ranks["tensor"][0]


def get_tensor_model_parallel_ranks() -> List[int]:
    return list(_state().ranks["tensor"])


# Context-parallel group: ranks splitting the tokens of the same sequences (ring attention or Ulysses).
def get_context_parallel_group():
    return _group("context")


def get_context_parallel_world_size() -> int:
    return _size_of("context")


def get_context_parallel_rank() -> int:
    return _rank_in("context")


def get_context_parallel_global_ranks() -> List[int]:
    return list(_state().ranks["context"])


# Data-parallel group. As in Megatron-LM, ``with_context_parallel=True`` gives DP x CP: the ranks holding the
# same parameters, over which gradients are reduced; without it, the ranks that read different samples.
def _data_axis(with_context_parallel: bool) -> str:
    return "data_context" if with_context_parallel else "data"


def get_data_parallel_group(with_context_parallel: bool = False):
    return _group(_data_axis(with_context_parallel))


def get_data_parallel_world_size(with_context_parallel: bool = False) -> int:
    return _size_of(_data_axis(with_context_parallel))


def get_data_parallel_rank(with_context_parallel: bool = False) -> int:
    return _rank_in(_data_axis(with_context_parallel))


def get_data_parallel_group_ranks(with_context_parallel: bool = False) -> List[int]:
    return list(_state().ranks[_data_axis(with_context_parallel)])


def get_data_parallel_src_rank(with_context_parallel: bool = False) -> int:
    return _state().ranks[_data_axis(with_context_parallel)][0]


# Pipeline-model-parallel group.
def get_pipeline_model_parallel_group():
    return _group("pipeline")


def get_pipeline_model_parallel_world_size() -> int:
    return _size_of("pipeline")


def get_pipeline_model_parallel_rank() -> int:
    return _rank_in("pipeline")


def get_pipeline_model_parallel_ranks() -> List[int]:
    return list(_state().ranks["pipeline"])


def get_pipeline_model_parallel_first_rank() -> int:
    return _state().ranks["pipeline"][0]


def get_pipeline_model_parallel_last_rank() -> int:
    return _state().ranks["pipeline"][-1]


def get_pipeline_model_parallel_next_rank() -> int:
    ranks = _state().ranks["pipeline"]
    return ranks[(_rank_in("pipeline") + 1) % len(ranks)]


def get_pipeline_model_parallel_prev_rank() -> int:
    ranks = _state().ranks["pipeline"]
    return ranks[(_rank_in("pipeline") - 1) % len(ranks)]


def get_virtual_pipeline_model_parallel_world_size() -> Optional[int]:
    return _state().virtual_pipeline_model_parallel_size


def get_virtual_pipeline_model_parallel_rank() -> Optional[int]:
    return _state().virtual_pipeline_model_parallel_rank


def set_virtual_pipeline_model_parallel_rank(rank: Optional[int]):
    _state().virtual_pipeline_model_parallel_rank = rank


def is_pipeline_first_stage(ignore_virtual: bool = False) -> bool:
    state = _state()
    if not ignore_virtual and state.virtual_pipeline_model_parallel_size:
        if state.virtual_pipeline_model_parallel_rank != 0:
            return False
    return get_pipeline_model_parallel_rank() == 0


def is_pipeline_last_stage(ignore_virtual: bool = False) -> bool:
    state = _state()
    if not ignore_virtual and state.virtual_pipeline_model_parallel_size:
        if state.virtual_pipeline_model_parallel_rank != state.virtual_pipeline_model_parallel_size - 1:
            return False
    return get_pipeline_model_parallel_rank() == get_pipeline_model_parallel_world_size() - 1


# Model-parallel group: every rank of one model replica (TP x PP).
def get_model_parallel_group():
    return _group("model")


def get_model_parallel_world_size() -> int:
    return _size_of("model")


def get_model_parallel_rank() -> int:
    return _rank_in("model")


# Embedding groups: first + last pipeline stage (tied word embeddings), first stage (positions).
def get_embedding_group():
    return _group("embedding")


def is_rank_in_embedding_group() -> bool:
    return "embedding" in _state().ranks


def get_position_embedding_group():
    return _group("position_embedding")


# Expert groups (expert parallelism is carved out of data parallelism).
def get_expert_model_parallel_group():
    return _group("expert")


def get_expert_model_parallel_world_size() -> int:
    return _size_of("expert")


def get_expert_model_parallel_rank() -> int:
    return _rank_in("expert")


def get_expert_model_parallel_ranks() -> List[int]:
    return list(_state().ranks["expert"])


def get_expert_data_parallel_ranks() -> List[int]:
    return list(_state().ranks["expert_data"])


def get_expert_data_parallel_group():
    return _group("expert_data")


def get_expert_data_parallel_world_size() -> int:
    return _size_of("expert_data")


def get_expert_data_parallel_rank() -> int:
    return _rank_in("expert_data")


def get_deepspeed_mpu():
    """The model-parallel unit DeepSpeed consumes; see :class:`megatron.core.deepspeed_mpu.DeepSpeedMPU`."""
    from megatron.core.deepspeed_mpu import DeepSpeedMPU

    _state()
    return DeepSpeedMPU()
