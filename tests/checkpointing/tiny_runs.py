"""Rank-side helpers: a DeepSpeed engine around TinyLM for a given layout, trained by the real training loop.

The global batch is fixed (GLOBAL_BATCH samples, the gradient-accumulation count absorbs the DP size) and the
data of step k is the same for every layout, so runs at different layouts are twins up to reduction order.
The learning rate follows Megatron's warmup + cosine schedule, so a resume that loses the scheduler position
changes the losses.
"""

import deepspeed
import torch

from megatron.checkpointing import CheckpointError, load_checkpoint
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import set_random_seed
from megatron.training.loop import TrainState, train
from megatron.training.lr_schedule import WarmupDecayLR
from megatron.training.optimizer import build_optimizer
from megatron.training.progress_log import ProgressLog, ThroughputModel
from tests.checkpointing.tiny_model import FFN, TinyLM, micro_batches

GLOBAL_BATCH, MICRO = 8, 2
SEED = 1234
TOTAL_STEPS = 6


def build_tiny_engine(tp: int = 1, zero: int = 1, *, dropout: float = 0.1, seed: int = SEED, ffn: int = FFN,
                      bf16: bool = False):
    """A fresh engine at TP=tp (DP = the rest of the world) with ZeRO stage ``zero`` (fp32 unless bf16)."""
    ps.initialize_model_parallel(tensor_model_parallel_size=tp)
    set_random_seed(seed)
    dp = ps.get_data_parallel_world_size()
    config = {"train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": GLOBAL_BATCH // (MICRO * dp),
              "train_batch_size": GLOBAL_BATCH, "gradient_clipping": 1.0, "zero_optimization": {"stage": zero},
              "steps_per_print": 10 ** 9, "wall_clock_breakdown": False}
    if bf16:
        config["bf16"] = {"enabled": True}
    mpu = ps.get_deepspeed_mpu()
    if zero == 3:
        with deepspeed.zero.Init(data_parallel_group=ps.get_data_parallel_group(), mpu=mpu,
                                 config_dict_or_path=config):
            model = TinyLM(dropout, ffn)
    else:
        model = TinyLM(dropout, ffn)
    optimizer = build_optimizer(model, lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95), eps=1e-8, cpu_offload=False)

    def schedule(opt):
        return WarmupDecayLR(opt, max_lr=3e-3, min_lr=3e-4, warmup_steps=2, decay_steps=TOTAL_STEPS,
                             decay_style="cosine")

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=config,
                                           mpu=mpu)
    return engine


def load_error_message(load_dir, *, error_type=CheckpointError, zero: int = 1, ffn: int = FFN,
                       universal: bool = False):
    """Load ``load_dir`` into a fresh TP=1 engine; the message of the ``error_type`` it raised, or None if it
    loaded."""
    engine = build_tiny_engine(tp=1, zero=zero, ffn=ffn)
    try:
        load_checkpoint(engine, load_dir, universal=universal, log=lambda _: None)
    except error_type as error:
        return str(error)
    finally:
        engine.destroy()
    return None


def run_steps(engine, state: TrainState, until: int, on_iteration_end=None) -> TrainState:
    """Train with the project's loop from ``state`` to iteration ``until``; losses accumulate in state.losses."""
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    gas = engine.gradient_accumulation_steps()
    progress = ProgressLog(log_interval=10 ** 6, throughput=ThroughputModel(1, 1.0, 1, None),
                           metrics_file=None, tensorboard_dir=None, is_writer=False, printer=lambda _: None)
    batches = micro_batches(state.consumed_train_samples, MICRO, gas, dp, dp_rank)
    return train(engine, state=state, train_iters=until, gradient_accumulation_steps=gas,
                 global_batch_size=GLOBAL_BATCH, train_batches=batches, progress=progress,
                 on_iteration_end=on_iteration_end)


def uninterrupted_losses(tp: int, zero: int, steps: int = TOTAL_STEPS, dropout: float = 0.1, bf16: bool = False):
    engine = build_tiny_engine(tp, zero, dropout=dropout, bf16=bf16)
    state = run_steps(engine, TrainState(), steps)
    engine.destroy()
    ps.destroy_model_parallel()
    return state.losses


def scramble_rng():
    """Move every random stream away from where a fresh run would be, so only a real restore can match."""
    import random

    import numpy as np

    from megatron.core.tensor_parallel import get_rng_tracker
    from megatron.core.tensor_parallel.random import MODEL_PARALLEL_RNG_TRACKER_NAME

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    tracker = get_rng_tracker()
    tracker.reset()
    tracker.add(MODEL_PARALLEL_RNG_TRACKER_NAME, 99 + ps.get_tensor_model_parallel_rank())
