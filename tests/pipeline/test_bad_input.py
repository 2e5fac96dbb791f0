"""Pipeline settings that cannot work fail before any engine is built, with the numbers and the fix."""

import pytest

from tests.distributed import distributed_test


def _resolve(world_size=2, zero_stage=0, deepspeed_extra=None, **values):
    from megatron.config import resolve_config

    settings = dict(num_layers=4, hidden_size=32, num_attention_heads=4, seq_length=16, micro_batch_size=2,
                    train_iters=5, lr=1e-3, tokenizer_type="NullTokenizer", vocab_size=120,
                    pipeline_model_parallel_size=2)
    settings.update(values)
    deepspeed_config = {"zero_optimization": {"stage": zero_stage}, **(deepspeed_extra or {})}
    return resolve_config(settings, deepspeed_config=deepspeed_config, world_size=world_size)


def test_layers_not_divisible_into_stages():
    with pytest.raises(ValueError, match=r"--num-layers 3 is not divisible by --pipeline-model-parallel-size 2"):
        _resolve(num_layers=3)


def test_layers_not_divisible_into_virtual_stages():
    with pytest.raises(ValueError, match=r"--num-layers 6 is not divisible by pipeline-parallel 2 x "
                                         r"--num-layers-per-virtual-pipeline-stage 2"):
        _resolve(num_layers=6, pipeline_schedule="interleaved", num_layers_per_virtual_pipeline_stage=2)


def test_interleaving_with_fewer_micro_batches_than_stages():
    # global batch 2 = micro 2 x 1 micro-batch x DP 1, on 2 stages
    with pytest.raises(ValueError, match=r"micro-batches .*1.* multiple of the pipeline size 2"):
        _resolve(num_layers=8, pipeline_schedule="interleaved", num_layers_per_virtual_pipeline_stage=2,
                 global_batch_size=2)


def test_interleaving_schedule_itself_refuses_fewer_micro_batches_than_stages():
    from megatron.pipeline.schedules import interleaved_one_f_one_b

    with pytest.raises(ValueError, match=r"1 is fewer than 2: raise --global-batch-size"):
        interleaved_one_f_one_b(num_micro_batches=1, pipeline_size=2, pipeline_rank=0, num_chunks=2)


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_deepspeed_schedule_with_zero_2_or_3_names_the_schedule_that_can(zero_stage):
    with pytest.raises(ValueError, match=rf"--pipeline-schedule deepspeed with ZeRO-{zero_stage}.*use "
                                         r"--pipeline-schedule 1f1b"):
        _resolve(zero_stage=zero_stage, pipeline_schedule="deepspeed")


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_megatron_schedules_accept_zero_2_and_3_and_are_the_default_for_them(zero_stage):
    assert _resolve(zero_stage=zero_stage).parallel.pipeline_schedule == "1f1b"
    assert _resolve(zero_stage=zero_stage, pipeline_schedule="interleaved", num_layers=8, global_batch_size=4,
                    num_layers_per_virtual_pipeline_stage=2).parallel.pipeline_schedule == "interleaved"


def test_fp16_with_megatron_schedules():
    with pytest.raises(ValueError, match=r"--pipeline-schedule 1f1b does not support fp16"):
        _resolve(pipeline_schedule="1f1b", deepspeed_extra={"fp16": {"enabled": True}})


def _builders_refuse_uneven_layers():
    from megatron.core import parallel_state as ps
    from megatron.pipeline import GPTPipelineModule, build_stage_chunks
    from tests.pipeline.parity import model_config

    ps.initialize_model_parallel(1, 2)
    config = model_config("gpt", 1, num_layers=3)
    with pytest.raises(ValueError, match=r"num_layers 3 is not divisible by the pipeline-model-parallel size 2"):
        GPTPipelineModule(config)
    with pytest.raises(ValueError, match=r"num_layers 3 is not divisible into 2 stages = 2 equal parts"):
        build_stage_chunks(config)
    with pytest.raises(ValueError, match=r"into 2 stages x 2 chunks per stage = 4 equal parts"):
        build_stage_chunks(model_config("gpt", 1, num_layers=6), num_chunks=2)


def test_pipeline_builders_refuse_layers_not_divisible_into_stages():
    distributed_test(world_size=2)(_builders_refuse_uneven_layers)()


def _grid_that_disagrees_is_refused():
    from deepspeed.runtime.pipe.topology import PipeDataParallelTopology, PipelineParallelGrid

    from megatron.core import parallel_state as ps
    from megatron.pipeline import check_grid_matches_parallel_state, pipeline_topology

    ps.initialize_model_parallel(2, 2)
    check_grid_matches_parallel_state(PipelineParallelGrid(topology=pipeline_topology()))
    # DeepSpeed's default topology has no tensor-parallel axis: it would pair TP peers as DP replicas.
    wrong = PipelineParallelGrid(topology=PipeDataParallelTopology(num_pp=2, num_dp=2))
    with pytest.raises(ValueError, match=r"disagrees with megatron's parallel_state .*data-parallel group: "
                                         r"DeepSpeed \[\d, \d\] vs parallel_state \[\d\]"):
        check_grid_matches_parallel_state(wrong)


def test_deepspeed_grid_that_disagrees_with_parallel_state_is_refused():
    distributed_test(world_size=4)(_grid_that_disagrees_is_refused)()


def test_interleaving_with_an_offloaded_zero_2_or_3_optimizer():
    with pytest.raises(ValueError, match=r"interleaved cannot offload the ZeRO-2 optimizer .*use "
                                         r"--pipeline-schedule 1f1b"):
        _resolve(zero_stage=2, pipeline_schedule="interleaved", num_layers=8, global_batch_size=4,
                 num_layers_per_virtual_pipeline_stage=2,
                 deepspeed_extra={"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})
