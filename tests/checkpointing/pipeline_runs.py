"""Rank-side helpers for pipeline checkpoint tests: a 4-layer GPT as a plain model or as a PP=2 pipeline
(DeepSpeed's PipelineEngine or Megatron's 1F1B schedule), built through megatron.pipeline.build_pipeline
with the project's optimizer and LR schedule, trained on fixed global batches (8 samples, DP=1).
"""

import deepspeed
import torch

from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import set_random_seed

VOCAB, SEQ, MICRO, GLOBAL_BATCH = 120, 16, 2, 8
SEED, TOTAL_STEPS = 1234, 6


def run_config(pp: int, schedule: str, zero: int, dropout: float):
    from megatron.config import resolve_config

    values = dict(model_family="gpt", num_layers=4, hidden_size=32, num_attention_heads=4, seq_length=SEQ,
                  max_position_embeddings=SEQ, micro_batch_size=MICRO, global_batch_size=GLOBAL_BATCH,
                  train_iters=TOTAL_STEPS, lr=3e-3, min_lr=3e-4, lr_warmup_iters=2, lr_decay_style="cosine",
                  clip_grad=1.0, weight_decay=0.01, hidden_dropout=dropout, attention_dropout=dropout,
                  pipeline_model_parallel_size=pp, tokenizer_type="NullTokenizer", vocab_size=VOCAB - 1,
                  make_vocab_size_divisible_by=8, seed=SEED)
    if pp > 1:
        values["pipeline_schedule"] = schedule
    config = resolve_config(values, deepspeed_config={"zero_optimization": {"stage": zero}},
                            world_size=comm.get_world_size())
    return config.with_vocab(VOCAB)


def build(pp: int = 1, schedule: str = "1f1b", zero: int = 1, dropout: float = 0.0, seed: int = SEED):
    """(engine, config): PP=1 builds the plain GPTModel engine the training code builds."""
    from megatron.model import GPTModel
    from megatron.pipeline import build_pipeline
    from megatron.training.engine import _lr_schedule_factory, build_engine, model_construction_context
    from megatron.training.optimizer import build_optimizer

    config = run_config(pp, schedule, zero, dropout)
    ps.initialize_model_parallel(1, pp)
    set_random_seed(seed)
    if pp == 1:
        return build_engine(config, lambda: GPTModel(config.model)), config
    training = config.training

    def initialize(module, mpu):
        optimizer = build_optimizer(module, lr=training.lr, weight_decay=training.weight_decay,
                                    betas=(training.adam_beta1, training.adam_beta2), eps=training.adam_eps,
                                    cpu_offload=False)
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config.deepspeed_dict(),
                                               lr_scheduler=_lr_schedule_factory(config), mpu=mpu)
        return engine

    engine = build_pipeline(config, initialize, model_construction_context(config, config.deepspeed_dict()))
    return engine, config


def micro_batches(step: int):
    generator = torch.Generator().manual_seed(500 + step)
    tokens = torch.randint(0, VOCAB - 1, (GLOBAL_BATCH, SEQ + 1), generator=generator)
    return [{"tokens": tokens[i:i + MICRO, :-1], "labels": tokens[i:i + MICRO, 1:],
             "loss_mask": torch.ones(MICRO, SEQ)} for i in range(0, GLOBAL_BATCH, MICRO)]


def train(engine, first_step: int, last_step: int, save_dir=None, save_at=None):
    """Steps first_step+1 .. last_step; saves after step ``save_at``; returns the losses."""
    from megatron.checkpointing import save_checkpoint
    from megatron.pipeline import is_pipeline, pipeline_train_step
    from megatron.training.loop import train_step

    losses = []
    for step in range(first_step, last_step):
        batches = iter(micro_batches(step))
        if is_pipeline(engine):
            loss, _, _ = pipeline_train_step(engine, batches)
        else:
            loss, _, _ = train_step(engine, batches, engine.gradient_accumulation_steps())
        losses.append(loss)
        if save_at == step + 1:
            save_checkpoint(engine, save_dir, iteration=step + 1, consumed_train_samples=(step + 1) * GLOBAL_BATCH)
    return losses
