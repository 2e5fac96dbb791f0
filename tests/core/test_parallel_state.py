"""Process groups: documented rank order, agreement with DeepSpeed's own topologies, the mpu, bad input."""

import pytest

from megatron.core.parallel_layout import ParallelLayout
from tests.distributed import distributed_test


def test_rank_order_tp_fastest_then_dp_then_pp():
    layout = ParallelLayout(world_size=8, tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    assert layout.data_parallel_size == 2
    assert layout.tensor_parallel_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout.data_parallel_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.pipeline_parallel_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.model_parallel_groups() == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert layout.embedding_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.position_embedding_groups() == [[0], [1], [2], [3]]
    for rank in range(8):
        assert layout.rank(*layout.coordinates(rank)) == rank


def test_every_axis_partitions_the_world():
    layout = ParallelLayout(world_size=16, tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                            expert_model_parallel_size=2)
    for groups in (layout.tensor_parallel_groups(), layout.data_parallel_groups(),
                   layout.pipeline_parallel_groups(), layout.model_parallel_groups(),
                   layout.expert_parallel_groups(), layout.expert_data_parallel_groups()):
        assert sorted(rank for group in groups for rank in group) == list(range(16))


def test_layout_matches_deepspeed_pipeline_topology():
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    for tp, pp, world in [(2, 2, 8), (1, 4, 8), (4, 1, 8), (2, 1, 4), (1, 2, 2)]:
        ours = ParallelLayout(world, tp, pp)
        theirs = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=world // (tp * pp))
        assert sorted(ours.tensor_parallel_groups()) == sorted(theirs.get_axis_comm_lists("model") or
                                                               [[r] for r in range(world)])
        assert sorted(ours.data_parallel_groups()) == sorted(theirs.get_axis_comm_lists("data") or
                                                             [[r] for r in range(world)])
        assert sorted(ours.pipeline_parallel_groups()) == sorted(theirs.get_axis_comm_lists("pipe") or
                                                                 [[r] for r in range(world)])
        for rank in range(world):
            coord = theirs.get_coord(rank)
            assert ours.coordinates(rank) == (coord.model, coord.data, coord.pipe)


def test_expert_groups_match_deepspeed_moe():
    from deepspeed.utils.groups import _get_expert_parallel_ranks

    for world, tp, pp, ep in [(16, 2, 1, 4), (8, 1, 2, 2), (8, 2, 1, 2), (4, 1, 1, 4), (2, 1, 1, 2)]:
        ours = ParallelLayout(world, tp, pp, ep)
        expert, expert_data = _get_expert_parallel_ranks(world, tp, ep, pp)
        assert sorted(ours.expert_parallel_groups()) == sorted(expert)
        assert sorted(ours.expert_data_parallel_groups()) == sorted(expert_data)


@pytest.mark.parametrize("world, tp, pp, message", [
    (6, 4, 1, r"world size 6 is not divisible by tensor-model-parallel size 4 x pipeline-model-parallel size 1"),
    (8, 2, 3, r"world size 8 is not divisible by .* size 2 x .* size 3 = 6"),
    (4, 0, 1, r"tensor-model-parallel size must be a positive integer, got 0"),
])
def test_sizes_that_do_not_divide_the_world_are_rejected(world, tp, pp, message):
    with pytest.raises(ValueError, match=message):
        ParallelLayout(world, tp, pp)


def test_expert_size_must_divide_data_parallel_size():
    with pytest.raises(ValueError, match=r"expert-model-parallel size 3 must divide the data-parallel size 4"):
        ParallelLayout(8, 2, 1, expert_model_parallel_size=3)


@distributed_test(world_size=4)
def test_groups_and_getters_on_four_ranks():
    from megatron.core import comm
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_model_parallel_size=2, expert_model_parallel_size=2)
    rank = comm.get_rank()
    assert ps.get_tensor_model_parallel_world_size() == 2
    assert ps.get_tensor_model_parallel_rank() == rank % 2
    assert ps.get_tensor_model_parallel_src_rank() == rank - rank % 2
    assert ps.get_data_parallel_world_size() == 2 and ps.get_data_parallel_rank() == rank // 2
    assert ps.get_data_parallel_group_ranks() == [rank % 2, rank % 2 + 2]
    assert ps.get_pipeline_model_parallel_world_size() == 1
    assert ps.is_pipeline_first_stage() and ps.is_pipeline_last_stage()
    assert ps.get_model_parallel_world_size() == 2
    assert ps.get_expert_model_parallel_world_size() == 2 and ps.get_expert_data_parallel_world_size() == 1
    # Each group really connects the ranks it claims: sum of global ranks over the group.
    import torch

    for group, members in ((ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_ranks()),
                           (ps.get_data_parallel_group(), ps.get_data_parallel_group_ranks())):
        value = torch.tensor([float(rank)])
        comm.all_reduce(value, group=group)
        assert value.item() == sum(members)


@distributed_test(world_size=4)
def test_pipeline_neighbours_and_embedding_group():
    from megatron.core import comm
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=4)
    rank = comm.get_rank()
    assert ps.get_pipeline_model_parallel_rank() == rank
    assert ps.get_pipeline_model_parallel_next_rank() == (rank + 1) % 4
    assert ps.get_pipeline_model_parallel_prev_rank() == (rank - 1) % 4
    assert ps.is_pipeline_first_stage() == (rank == 0) and ps.is_pipeline_last_stage() == (rank == 3)
    assert ps.is_rank_in_embedding_group() == (rank in (0, 3))
    assert (ps.get_embedding_group() is None) == (rank in (1, 2))


@distributed_test(world_size=4)
def test_deepspeed_mpu_contract():
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_model_parallel_size=2)
    mpu = ps.get_deepspeed_mpu()
    for method in ("get_data_parallel_group", "get_data_parallel_world_size", "get_data_parallel_rank",
                   "get_model_parallel_group", "get_model_parallel_world_size", "get_model_parallel_rank",
                   "get_data_parallel_group_ranks", "get_tensor_model_parallel_rank",
                   "get_tensor_model_parallel_world_size", "get_tensor_model_parallel_group",
                   "get_pipeline_model_parallel_world_size"):
        assert callable(getattr(mpu, method)), method
    # DeepSpeed treats an mpu with this method as a Ulysses mpu and drops our data-parallel group.
    assert not hasattr(mpu, "initialize_sequence_parallel")
    assert not hasattr(mpu, "get_sequence_parallel_world_size")
    assert mpu.get_model_parallel_world_size() == 2 and mpu.get_data_parallel_world_size() == 2


@distributed_test(world_size=2)
def test_second_initialization_is_an_error_until_destroyed():
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_model_parallel_size=2)
    with pytest.raises(ValueError, match=r"already initialized \(world 2 = TP 2 x DP 1 x PP 1\); call "
                                         r"parallel_state.destroy_model_parallel\(\)"):
        ps.initialize_model_parallel(tensor_model_parallel_size=1)
    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=1)
    assert ps.get_data_parallel_world_size() == 2


@distributed_test(world_size=2)
def test_initialize_rejects_sizes_that_do_not_divide_the_world():
    from megatron.core import parallel_state as ps

    with pytest.raises(ValueError, match=r"world size 2 is not divisible by tensor-model-parallel size 4"):
        ps.initialize_model_parallel(tensor_model_parallel_size=4)
    assert not ps.model_parallel_is_initialized()


@distributed_test(world_size=2)
def test_tensor_parallel_size_must_divide_layer_and_head_sizes():
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
    from megatron.core.tensor_parallel.utils import divide

    ps.initialize_model_parallel(tensor_model_parallel_size=2)
    with pytest.raises(ValueError, match=r"output size of a column-parallel layer 7 is not divisible by the "
                                         r"tensor-model-parallel size 2"):
        ColumnParallelLinear(8, 7)
    with pytest.raises(ValueError, match=r"input size of a row-parallel layer 9 is not divisible by"):
        RowParallelLinear(9, 8)
    with pytest.raises(ValueError, match=r"vocabulary size 11 is not divisible"):
        VocabParallelEmbedding(11, 8)
    with pytest.raises(ValueError, match=r"number of attention heads 3 is not divisible by the "
                                         r"tensor-model-parallel size 2"):
        divide(3, 2, "number of attention heads")


@distributed_test(world_size=2)
def test_all_to_all_single_exchanges_uneven_chunks():
    import torch

    from megatron.core import comm

    rank = comm.get_rank()
    # rank r sends r+1 rows to rank 0 and 2-r rows to rank 1; each row holds (sender, receiver).
    input_splits = [rank + 1, 2 - rank]
    rows = [torch.tensor([[rank, peer]] * count, dtype=torch.float32) for peer, count in enumerate(input_splits)]
    output_splits = [peer + 1 if rank == 0 else 2 - peer for peer in range(2)]
    output = torch.empty(sum(output_splits), 2)
    comm.all_to_all_single(output, torch.cat(rows), output_splits, input_splits)
    expected = torch.cat([torch.tensor([[peer, rank]] * count, dtype=torch.float32)
                          for peer, count in enumerate(output_splits)])
    assert torch.equal(output, expected)


def test_context_parallel_axis_sits_between_tp_and_dp():
    # Megatron-LM's order tp-cp-dp-pp: rank = tp + TP * (cp + CP * (dp + DP * pp)).
    layout = ParallelLayout(world_size=16, tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                            context_parallel_size=2)
    assert layout.data_parallel_size == 2
    assert layout.tensor_parallel_groups()[:2] == [[0, 1], [2, 3]]
    assert layout.context_parallel_groups()[:2] == [[0, 2], [1, 3]]
    assert layout.data_parallel_groups()[:2] == [[0, 4], [1, 5]]
    assert layout.data_context_parallel_groups()[:2] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert layout.pipeline_parallel_groups()[0] == [0, 8]
    assert layout.model_parallel_groups()[0] == [0, 1, 8, 9]
    for groups in (layout.tensor_parallel_groups(), layout.context_parallel_groups(),
                   layout.data_parallel_groups(), layout.data_context_parallel_groups(),
                   layout.pipeline_parallel_groups(), layout.model_parallel_groups()):
        assert sorted(rank for group in groups for rank in group) == list(range(16))
    for rank in range(16):
        assert layout.rank(*layout.coordinates(rank), cp_rank=layout.context_parallel_rank(rank)) == rank


def test_context_parallel_size_must_divide_the_world():
    with pytest.raises(ValueError, match=r"world size 4 is not divisible by .* context-parallel size 4 x "
                                         r".* = 8; choose TP 2 x CP 4 x PP 1"):
        ParallelLayout(world_size=4, tensor_model_parallel_size=2, context_parallel_size=4)


@distributed_test(world_size=2)
def test_context_parallel_groups_and_deepspeed_mpu_reduce_over_dp_times_cp():
    from megatron.core import comm, parallel_state as ps

    ps.initialize_model_parallel(context_parallel_size=2)
    rank = comm.get_rank()
    assert ps.get_context_parallel_world_size() == 2 and ps.get_context_parallel_rank() == rank
    assert ps.get_data_parallel_world_size() == 1 and ps.get_data_parallel_group_ranks() == [rank]
    assert ps.get_data_parallel_group_ranks(with_context_parallel=True) == [0, 1]
    mpu = ps.get_deepspeed_mpu()
    # DeepSpeed reduces and partitions gradients over the group the mpu hands it: CP ranks hold the same
    # parameters, so that must be DP x CP.
    assert mpu.get_data_parallel_world_size() == 2 and mpu.get_data_parallel_rank() == rank
    assert mpu.get_data_parallel_group_ranks() == [0, 1]
    assert mpu.get_model_parallel_world_size() == 1
    import torch
    value = torch.tensor([float(rank + 1)])
    comm.all_reduce(value, group=mpu.get_data_parallel_group())
    assert value.item() == 3.0
