"""The one place that turns a resolved RunConfig with PP > 1 into a trainable pipeline, by schedule.

    deepspeed     GPTPipelineModule in DeepSpeed's PipelineEngine (ZeRO-0/1): ``engine.train_batch``
    1f1b          ModelChunks (one chunk) in a DeepSpeed engine, driven by ScheduledPipeline (any ZeRO stage)
    interleaved   ModelChunks (several chunks, --num-layers-per-virtual-pipeline-stage), same driver

The caller (megatron/training/engine.py) supplies ``initialize(model, mpu) -> engine`` (optimizer, LR
schedule, deepspeed.initialize) and the construction context (deepspeed.zero.Init for ZeRO-3), so the
optimizer and schedule are the same as without a pipeline. :func:`pipeline_train_step` and
:func:`pipeline_evaluate` are what the training loop calls for either kind of pipeline.
"""

import contextlib
from typing import Callable, Iterator, Optional, Tuple

import torch
from deepspeed.runtime.pipe.engine import PipelineEngine

from megatron.core import parallel_state as ps
from megatron.pipeline.deepspeed_pipeline import GPTPipelineModule, pipe_batches, prepare_pipeline_engine
from megatron.pipeline.scheduled_pipeline import ScheduledPipeline
from megatron.pipeline.stage_model import build_stage_chunks
from megatron.pipeline.stage_mpu import StageMPU, give_unique_checkpoint_names

SCHEDULES = ("deepspeed", "1f1b", "interleaved")


def build_pipeline(config, initialize: Callable, construction_context=None):
    """``config`` is a RunConfig with pipeline_model_parallel_size > 1 on initialised parallel_state groups."""
    parallel, recompute = config.parallel, config.recompute
    schedule = parallel.pipeline_schedule
    if parallel.pipeline_model_parallel_size < 2:
        raise ValueError("build_pipeline needs --pipeline-model-parallel-size >= 2; PP=1 trains GPTModel "
                         "without any pipeline module")
    if schedule not in SCHEDULES:
        raise ValueError(f"--pipeline-schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if schedule == "deepspeed":
        if config.zero.stage >= 2:
            raise ValueError(f"--pipeline-schedule deepspeed cannot use ZeRO-{config.zero.stage} (DeepSpeed's "
                             f"PipelineEngine supports ZeRO-0/1); use --pipeline-schedule 1f1b or interleaved")
        module = GPTPipelineModule(config.model, sequence_parallel=parallel.sequence_parallel,
                                   partition_method=parallel.pipeline_partition_method,
                                   activation_checkpoint_interval=1 if recompute.recompute_granularity == "full" else 0,
                                   recompute_core_attention=recompute.recompute_granularity == "selective",
                                   init_seed=config.training.seed)
        engine = initialize(module, None)  # DeepSpeed takes the mpu from the module's grid
        prepare_pipeline_engine(engine)
        return engine
    num_chunks = 1
    if schedule == "interleaved":
        per_chunk = parallel.num_layers_per_virtual_pipeline_stage
        num_chunks = config.model.num_layers // (parallel.pipeline_model_parallel_size * per_chunk)
    with construction_context or contextlib.nullcontext():
        chunks = build_stage_chunks(config.model, num_chunks=num_chunks, sequence_parallel=parallel.sequence_parallel,
                                    recompute_granularity=recompute.recompute_granularity,
                                    partition_activations=recompute.partition_activations,
                                    init_seed=config.training.seed, moe_config=config.moe)
    return scheduled_pipeline(initialize(chunks, StageMPU()), config.model,
                              sequence_parallel=parallel.sequence_parallel)


def scheduled_pipeline(engine, model_config, *, sequence_parallel: bool = False) -> ScheduledPipeline:
    """Wrap a DeepSpeed engine built around ModelChunks with ``mpu=StageMPU()``."""
    give_unique_checkpoint_names(engine)
    return ScheduledPipeline(engine, hidden_size=model_config.hidden_size, seq_length=model_config.seq_length,
                             sequence_parallel=sequence_parallel and ps.get_tensor_model_parallel_world_size() > 1)


def is_pipeline(engine) -> bool:
    return isinstance(engine, (PipelineEngine, ScheduledPipeline))


def pipeline_train_step(engine, micro_batches: Iterator[dict],
                        moe_metrics=None) -> Tuple[float, Optional[float], bool]:
    """One global batch; (loss over micro-batches and DP, grad norm, skipped), equal on every rank.
    ``moe_metrics`` (a MoEMetrics) reads this stage's MoE layers after each forward (1f1b/interleaved)."""
    if isinstance(engine, ScheduledPipeline):
        return engine.train_step(micro_batches, moe_metrics)
    skipped_before = engine.skipped_steps
    loss = engine.train_batch(pipe_batches(micro_batches))
    norm = engine.get_global_grad_norm()
    return float(loss), None if norm is None else float(norm), engine.skipped_steps > skipped_before


@torch.no_grad()
def pipeline_evaluate(engine, micro_batches: Iterator[dict], num_micro_batches: int) -> float:
    if isinstance(engine, ScheduledPipeline):
        return engine.evaluate(micro_batches, num_micro_batches)
    return float(engine.eval_batch(pipe_batches(micro_batches), num_micro_batches=num_micro_batches))
