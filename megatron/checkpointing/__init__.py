"""Checkpoints: atomic save and exact resume through DeepSpeed, resharding, safe loading.

    save_checkpoint(engine, save_dir, iteration=..., consumed_train_samples=..., config=...)
    load_checkpoint(engine, load_dir, finetune=..., no_load_optim=..., no_load_rng=..., universal=...)
    Checkpointer(engine, save_dir, save_interval=..., keep_last=...)   # train(on_iteration_end=...) hook

Conversion to and from Hugging Face lives in megatron.checkpointing.hf and tools/checkpoint/.
"""

from megatron.checkpointing.checkpointer import Checkpointer
from megatron.checkpointing.load import ResumePoint, find_checkpoint, load_checkpoint
from megatron.checkpointing.safe_load import CheckpointError, UnsafeCheckpointError, safe_torch_load
from megatron.checkpointing.save import prune_checkpoints, save_checkpoint

__all__ = ["Checkpointer", "CheckpointError", "ResumePoint", "UnsafeCheckpointError", "find_checkpoint",
           "load_checkpoint", "prune_checkpoints", "safe_torch_load", "save_checkpoint"]
