"""Pipeline parallelism for GPTModel, two ways, one model definition and one checkpoint naming.

- ``--pipeline-schedule deepspeed``: the model as a DeepSpeed PipelineModule (deepspeed_pipeline.py), trained
  by DeepSpeed's PipelineEngine (``train_batch`` / ``eval_batch``); ZeRO-0/1.
- ``--pipeline-schedule 1f1b | interleaved``: Megatron's schedules (schedules.py, scheduled_pipeline.py) over
  this rank's model chunks (stage_model.py) inside an ordinary DeepSpeed engine; any ZeRO stage, CPU offload.

param_names.py maps both forms' parameter names to GPTModel's. build.py is what training calls.
"""

from megatron.pipeline.build import (
    SCHEDULES,
    build_pipeline,
    is_pipeline,
    pipeline_evaluate,
    pipeline_train_step,
    scheduled_pipeline,
)
from megatron.pipeline.deepspeed_pipeline import (
    GPTPipelineModule,
    check_grid_matches_parallel_state,
    gpt_layer_specs,
    pipe_batches,
    pipeline_topology,
    prepare_pipeline_engine,
    to_pipe_batch,
)
from megatron.pipeline.param_names import (
    load_model_state,
    model_to_pipeline_module_name,
    model_to_stage_chunks_name,
    pipeline_module_to_model_name,
    stage_chunks_to_model_name,
    to_model_state,
)
from megatron.pipeline.scheduled_pipeline import ScheduledPipeline
from megatron.pipeline.schedules import analytic_bubble_fraction, interleaved_one_f_one_b, one_f_one_b, simulate
from megatron.pipeline.stage_model import ModelChunks, build_stage_chunks
from megatron.pipeline.stage_mpu import StageMPU
