"""Rank-side training runs of the two pipeline forms, started by the tests on a rank pool.

Each returns the per-step losses and global grad norms this rank saw (equal on every rank). Every stage
initialises itself from SEED: nothing is copied from the single-rank model.
"""

from tests.pipeline.parity import SEED, STEPS, deepspeed_config, model_config, optimizer_for, rank_micro_batches


def _layout(tensor_parallel: int, pipeline_parallel: int):
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_parallel, pipeline_parallel)
    return ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()


def deepspeed_schedule_losses(family: str, zero_stage: int, micro_batches: int = 4, tensor_parallel: int = 1,
                              pipeline_parallel: int = 2, bf16: bool = False, activation_checkpoint_interval: int = 0,
                              partition_method: str = "type:TransformerLayer", zero_options: dict = None,
                              extra: dict = None):
    """GPTPipelineModule in DeepSpeed's PipelineEngine, trained with engine.train_batch."""
    import deepspeed

    from megatron.pipeline import GPTPipelineModule, pipe_batches, prepare_pipeline_engine

    dp, dp_rank = _layout(tensor_parallel, pipeline_parallel)
    config = model_config(family, tensor_parallel)
    module = GPTPipelineModule(config, partition_method=partition_method,
                               activation_checkpoint_interval=activation_checkpoint_interval, init_seed=SEED)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer_for(module),
                                      config=deepspeed_config(micro_batches, dp, zero_stage, bf16, zero_options, extra))
    prepare_pipeline_engine(engine)
    losses, norms = [], []
    for step in range(STEPS):
        batches = iter(rank_micro_batches(family, step, micro_batches, dp_rank, dp))
        losses.append(float(engine.train_batch(pipe_batches(batches))))
        norms.append(float(engine.get_global_grad_norm()))
    engine.destroy()
    return {"losses": losses, "norms": norms}


def megatron_schedule_losses(family: str, zero_stage: int, micro_batches: int = 4, tensor_parallel: int = 1,
                             pipeline_parallel: int = 2, num_chunks: int = 1, bf16: bool = False,
                             sequence_parallel: bool = False, num_layers: int = 4, evaluate: bool = False,
                             zero_options: dict = None, extra: dict = None):
    """ModelChunks in an ordinary DeepSpeed engine (mpu=StageMPU), driven by ScheduledPipeline.

    With ``evaluate`` the result also holds the forward-only loss of the first global batch after training.
    """
    import deepspeed

    from megatron.pipeline import StageMPU, build_stage_chunks, scheduled_pipeline

    dp, dp_rank = _layout(tensor_parallel, pipeline_parallel)
    config = model_config(family, tensor_parallel, num_layers)
    # Built outside deepspeed.zero.Init (ZeRO-3 partitions the weights when the engine is created); the
    # product's path under zero.Init is proven in tests/training/test_layout_invariance.py.
    chunks = build_stage_chunks(config, num_chunks=num_chunks, sequence_parallel=sequence_parallel, init_seed=SEED)
    engine, *_ = deepspeed.initialize(model=chunks, optimizer=optimizer_for(chunks), mpu=StageMPU(),
                                      config=deepspeed_config(micro_batches, dp, zero_stage, bf16, zero_options, extra))
    pipeline = scheduled_pipeline(engine, config, sequence_parallel=sequence_parallel)
    losses, norms = [], []
    for step in range(STEPS):
        loss, norm, skipped = pipeline.train_step(iter(rank_micro_batches(family, step, micro_batches, dp_rank, dp)))
        assert not skipped
        losses.append(loss)
        norms.append(norm)
    result = {"losses": losses, "norms": norms}
    if evaluate:
        result["eval"] = pipeline.evaluate(iter(rank_micro_batches(family, 0, micro_batches, dp_rank, dp)),
                                           micro_batches)
    engine.destroy()
    return result


def serial_eval_after_training(family: str, micro_batches: int) -> float:
    """Single rank: the loss of global batch 0 after STEPS training steps (the twin of ``evaluate``)."""
    import deepspeed

    from megatron.core import parallel_state as ps
    from megatron.model import GPTModel
    from megatron.training.loop import evaluate, train_step

    ps.initialize_model_parallel()
    config = model_config(family, 1)
    model = GPTModel(config, init_seed=SEED)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer_for(model), mpu=ps.get_deepspeed_mpu(),
                                      config=deepspeed_config(micro_batches, 1, 0))
    for step in range(STEPS):
        train_step(engine, iter(rank_micro_batches(family, step, micro_batches, 0, 1)), micro_batches)
    loss = evaluate(engine, iter(rank_micro_batches(family, 0, micro_batches, 0, 1)), micro_batches)
    engine.destroy()
    return loss


def checkpoint_file_names(save_dir: str, zero_stage: int, tensor_parallel: int = 1):
    """One 1F1B step at PP=2, then DeepSpeed's save_checkpoint: the files every rank wrote."""
    import os

    import deepspeed

    from megatron.pipeline import StageMPU, build_stage_chunks, scheduled_pipeline

    dp, dp_rank = _layout(tensor_parallel, 2)
    config = model_config("llama", tensor_parallel)
    chunks = build_stage_chunks(config)
    engine, *_ = deepspeed.initialize(model=chunks, optimizer=optimizer_for(chunks), mpu=StageMPU(),
                                      config=deepspeed_config(2, dp, zero_stage))
    pipeline = scheduled_pipeline(engine, config)
    pipeline.train_step(iter(rank_micro_batches("llama", 0, 2, dp_rank, dp)))
    pipeline.save_checkpoint(save_dir, tag="step1")
    engine.destroy()
    return sorted(os.listdir(os.path.join(save_dir, "step1")))
