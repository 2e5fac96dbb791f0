"""Pre-training a GPT/Llama model: wires the resolved configuration to groups, data, model, engine and loop."""

import os
from typing import Optional

import torch
from deepspeed.accelerator import get_accelerator

from megatron.checkpointing import Checkpointer
from megatron.checkpointing.checkpointer import NonFiniteModelError
from megatron.checkpointing.tokenizer_check import tokenizer_fingerprint
from megatron.config import RunConfig
from megatron.config.run_length import rampup_of
from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import set_random_seed
from megatron.training.data_setup import TrainingData, build_training_data
from megatron.training.engine import build_engine
from megatron.training.evaluate_only import evaluate_checkpoint
from megatron.training.host_allocator import host_allocator_note
from megatron.training.loop import TrainState, TrainingDiverged, train
from megatron.training.model_setup import build_model, flops_per_iteration
from megatron.training.peak_flops import device_peak_tflops
from megatron.training.progress_log import ProgressLog, ThroughputModel
from megatron.training.tensorboard_tags import MegatronDeepSpeedTags
from megatron.training.run_guard import RunGuard
from megatron.training.world_hosts import log_world_hosts


def log_rank0(message: str):
    if comm.get_rank() == 0:
        print(message, flush=True)


def initialize_parallel(config: RunConfig, printer=log_rank0):
    parallel = config.parallel
    if comm.get_world_size() != parallel.world_size:
        raise ValueError(f"the configuration was resolved for a world of {parallel.world_size} processes but "
                         f"{comm.get_world_size()} joined; launch with the same number of processes")
    virtual = None
    if parallel.num_layers_per_virtual_pipeline_stage:
        virtual = config.model.num_layers // (parallel.pipeline_model_parallel_size
                                              * parallel.num_layers_per_virtual_pipeline_stage)
    ps.initialize_model_parallel(parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size,
                                 virtual_pipeline_model_parallel_size=virtual,
                                 expert_model_parallel_size=parallel.expert_model_parallel_size,
                                 context_parallel_size=parallel.context_parallel_axis_size)
    printer(f"> parallel layout: {ps.get_layout().describe()}")
    if comm.get_world_size() > 1:
        log_world_hosts(printer)


def metrics_path(config: RunConfig) -> Optional[str]:
    logging = config.logging
    if logging.metrics_file:
        return logging.metrics_file
    return os.path.join(logging.output_dir, "metrics.jsonl") if logging.output_dir else None


def pretrain(config: RunConfig, printer=log_rank0) -> TrainState:
    """Runs the whole job on an initialised world (``comm.init_distributed()``); returns the final state."""
    for note in config.notes:  # legacy flags without effect, Megatron-DeepSpeed defaults taken (logged once)
        printer(f"> note: {note}")
    initialize_parallel(config, printer)
    # Save folder writable and locked, watchdog started: before any data, model or training work.
    guard = RunGuard(config, printer).start()
    try:
        return _pretrain(config, guard, printer)
    finally:
        guard.close()


def _pretrain(config: RunConfig, guard: RunGuard, printer) -> TrainState:
    allocator_note = host_allocator_note(get_accelerator().device_name())
    if allocator_note:
        printer(allocator_note)
    set_random_seed(config.training.seed)
    data: TrainingData = build_training_data(config, printer)
    config = config.with_vocab(data.tokenizer.vocab_size)
    engine = build_engine(config, lambda: build_model(config))

    training = config.training
    global_batch = training.global_batch_size  # DeepSpeed's train_batch_size counts CP ranks too (engine.py)
    precision = config.precision
    compute_dtype = torch.bfloat16 if precision.bf16 else torch.float16 if precision.fp16 else torch.float32
    peak, peak_source = device_peak_tflops(config.logging.peak_tflops_per_device, compute_dtype)
    throughput = ThroughputModel(tokens_per_iteration=global_batch * config.model.seq_length,
                                 flops_per_iteration=flops_per_iteration(config, global_batch),
                                 world_size=comm.get_world_size(), peak_tflops_per_device=peak)
    printer(f"> model: {sum(p.numel() for p in engine.module.parameters())} parameters on this rank; "
            f"global batch {global_batch} = micro {engine.train_micro_batch_size_per_gpu()} x grad acc "
            f"{engine.gradient_accumulation_steps()} x DP {ps.get_data_parallel_world_size()}; ZeRO stage "
            f"{engine.zero_optimization_stage()}; MFU against a peak of "
            f"{format(peak, '.3f') if peak else 'n/a'} TFLOP/s/device ({peak_source})")
    progress = ProgressLog(log_interval=config.logging.log_interval, throughput=throughput,
                           metrics_file=metrics_path(config), tensorboard_dir=config.logging.tensorboard_dir,
                           is_writer=comm.get_rank() == 0, printer=printer,
                           tensorboard_tags=config.logging.tensorboard_tags,
                           megatron_deepspeed_tags=MegatronDeepSpeedTags.from_logging(config.logging),
                           tensorboard_queue_size=config.logging.tensorboard_queue_size,
                           tokens_per_sample=config.model.seq_length)
    # --load / --save / --save-interval / --keep-last; SIGTERM or SIGINT saves and stops the loop.
    checkpointer = Checkpointer.from_config(engine, config, log=printer,
                                            tokenizer=tokenizer_fingerprint(data.tokenizer, config.data))
    resumed = checkpointer.resume()
    if resumed is None and config.checkpoint.load and config.checkpoint.exit_on_missing_checkpoint:
        raise ValueError(f"--exit-on-missing-checkpoint: {config.checkpoint.load} holds no checkpoint")
    if training.skip_train:
        state = TrainState(iteration=resumed.iteration if resumed else 0)
        try:
            evaluate_checkpoint(engine, data, resumed, config, progress, printer)
        finally:
            progress.close()
        state.history = progress.history
        engine.destroy()
        ps.destroy_model_parallel()
        return state
    state = TrainState() if resumed is None else TrainState(iteration=resumed.iteration,
                                                            consumed_train_samples=resumed.consumed_train_samples)
    rampup = rampup_of(training)
    train_batches = data.train_batches(state.consumed_train_samples)
    checkpointer.restore_rng()  # after the DataLoader iterator, which draws from torch's RNG when created
    with checkpointer:
        try:
            train(engine, state=state, train_iters=training.train_iters,
                  gradient_accumulation_steps=engine.gradient_accumulation_steps(),
                  global_batch_size=global_batch, train_batches=train_batches, progress=progress,
                  eval_interval=training.eval_interval, eval_iters=training.eval_iters,
                  valid_batches=data.valid_batches, exit_interval=training.exit_interval,
                  exit_duration_in_mins=training.exit_duration_in_mins,
                  on_iteration_end=guard.iteration_hook(checkpointer),
                  max_skipped_steps=training.max_skipped_steps,
                  batch_size_at=rampup.batch_size_at if rampup else None, train_tokens=training.train_tokens,
                  tokens_per_sample=config.model.seq_length)
        except NonFiniteModelError as error:  # the loop's TrainingDiverged, or a save that found NaN weights
            raise TrainingDiverged(f"{error}. {checkpointer.last_good_note()}") from None
        except Exception as error:
            guard.raise_if_collective_failure(error)
            raise
        finally:
            progress.close()
        checkpointer.finish(state)
    state.history = progress.history
    engine.destroy()
    ps.destroy_model_parallel()
    return state
