"""Building the DeepSpeed engine around a tensor-parallel model.

The model is constructed under ``deepspeed.zero.Init`` for ZeRO-3 (each rank only ever holds its partition),
activation checkpointing is configured with our mpu so recomputation replays per-TP-rank RNG states, and the
optimizer/scheduler are Megatron's unless the DeepSpeed JSON defines its own.
"""

import contextlib
from typing import Callable

import deepspeed
import torch

from megatron.config import RunConfig
from megatron.core import parallel_state as ps
from megatron.training.lr_schedule import WarmupDecayLR
from megatron.training.optimizer import build_optimizer, param_groups


def _lr_schedule_factory(config: RunConfig):
    training = config.training

    shape = dict(decay_style=training.lr_decay_style,
                 use_checkpoint_shape=training.use_checkpoint_opt_param_scheduler)
    if training.counts_schedule_in_iterations:
        shape.update(warmup_steps=training.warmup_iters, decay_steps=training.lr_decay_iters)
    else:
        warmup, warmup_unit, decay, decay_unit = training.lr_schedule_plan(config.model.seq_length)
        shape.update(warmup_steps=warmup, warmup_unit=warmup_unit, decay_steps=decay, decay_unit=decay_unit,
                     samples_per_step=training.global_batch_size, tokens_per_sample=config.model.seq_length)

    def make(optimizer):
        return WarmupDecayLR(optimizer, max_lr=training.lr, min_lr=training.min_lr, **shape)
    return make


def configure_activation_checkpointing(config: RunConfig):
    recompute = config.recompute
    if recompute.recompute_granularity is None:
        return
    deepspeed.checkpointing.configure(
        ps.get_deepspeed_mpu(), partition_activations=recompute.partition_activations,
        contiguous_checkpointing=recompute.contiguous_checkpointing,
        num_checkpoints=config.model.num_layers, checkpoint_in_cpu=recompute.checkpoint_in_cpu,
        synchronize=recompute.synchronize_each_layer, profile=recompute.profile_backward)


def model_construction_context(config: RunConfig, ds_config: dict):
    """ZeRO-3 partitions each parameter as soon as its module is built, so no rank ever holds the full model."""
    if config.zero.stage != 3:
        return contextlib.nullcontext()
    return deepspeed.zero.Init(data_parallel_group=ps.get_data_parallel_group(with_context_parallel=True),
                               mpu=ps.get_deepspeed_mpu(),
                               config_dict_or_path=ds_config,
                               remote_device="cpu" if config.zero.offload_param == "cpu" else None)


def _json_weight_decay(config: RunConfig) -> float:
    return float(config.deepspeed_config["optimizer"].get("params", {}).get("weight_decay", 0.0))


def deepspeed_view_of_batch(config: RunConfig, ds_config: dict) -> dict:
    """DeepSpeed sees context-parallel ranks as data-parallel ones (our mpu gives it DP x CP), so it checks
    train_batch_size = micro x accumulation x DP x CP: one global batch counts CP times for it, although the CP
    ranks of a group read the same samples. Everything of ours counts real samples (--global-batch-size)."""
    cp = config.parallel.context_parallel_axis_size
    if cp == 1:
        return ds_config
    return dict(ds_config, train_batch_size=ds_config["train_batch_size"] * cp)


def build_engine(config: RunConfig, model_provider: Callable[[], torch.nn.Module]):
    """Returns the DeepSpeed engine; its ``lr_scheduler`` is Megatron's schedule unless the JSON has one."""
    ds_config = deepspeed_view_of_batch(config, config.deepspeed_dict())
    configure_activation_checkpointing(config)
    if config.parallel.pipeline_model_parallel_size > 1:
        # The one dispatch to the pipeline forms; megatron/pipeline/build.py picks the schedule.
        from megatron.pipeline import build_pipeline

        return build_pipeline(config, lambda model, mpu: initialize_engine(config, ds_config, model, mpu),
                              model_construction_context(config, ds_config))
    with model_construction_context(config, ds_config):
        model = model_provider()
    return initialize_engine(config, ds_config, model, ps.get_deepspeed_mpu())


def initialize_engine(config: RunConfig, ds_config: dict, model: torch.nn.Module, mpu):
    """deepspeed.initialize with Megatron's optimizer and LR schedule (unless the JSON defines them)."""
    optimizer, training = None, config.training
    if not config.deepspeed_builds_optimizer:
        optimizer = build_optimizer(model, lr=training.lr, weight_decay=training.weight_decay,
                                    betas=(training.adam_beta1, training.adam_beta2), eps=training.adam_eps,
                                    cpu_offload=config.zero.offload_optimizer == "cpu",
                                    kind=training.optimizer, sgd_momentum=training.sgd_momentum)
    # When the JSON builds the optimizer it still gets Megatron's groups: no weight decay on biases and norms.
    groups = None if optimizer is not None else param_groups(model, _json_weight_decay(config))
    # A callable: DeepSpeed applies it to the optimizer it ends up with (ours or the JSON's).
    lr_scheduler = None if config.deepspeed_builds_scheduler else _lr_schedule_factory(config)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=groups,
                                           lr_scheduler=lr_scheduler, config=ds_config, mpu=mpu)
    return engine
