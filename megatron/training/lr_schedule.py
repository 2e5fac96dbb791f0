"""Megatron's learning-rate schedule: linear warmup, then constant / linear / cosine decay to min_lr.

Counted in optimizer steps (iterations). DeepSpeed calls ``step()`` after every optimizer step that was
not skipped for an fp16 overflow, so the schedule advances exactly with the parameters. The state is two
integers, saved in checkpoints through ``state_dict``.
"""

import math
from typing import Optional

from torch.optim import Optimizer

DECAY_STYLES = ("constant", "linear", "cosine")


class WarmupDecayLR:
    def __init__(self, optimizer: Optimizer, *, max_lr: float, min_lr: float, warmup_steps: int,
                 decay_steps: int, decay_style: str):
        if decay_style not in DECAY_STYLES:
            raise ValueError(f"lr decay style {decay_style!r} is not one of {DECAY_STYLES}")
        if not 0.0 <= min_lr <= max_lr:
            raise ValueError(f"need 0 <= min_lr ({min_lr}) <= lr ({max_lr})")
        if warmup_steps < 0 or (decay_style != "constant" and decay_steps <= warmup_steps):
            raise ValueError(f"lr decay iterations ({decay_steps}) must exceed warmup iterations ({warmup_steps}); "
                             f"raise --lr-decay-iters or lower the warmup")
        self.optimizer = optimizer
        self.max_lr, self.min_lr = max_lr, min_lr
        self.warmup_steps, self.decay_steps, self.decay_style = warmup_steps, decay_steps, decay_style
        self.num_steps = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self.max_lr * step / self.warmup_steps
        if self.decay_style == "constant":
            return self.max_lr
        if step > self.decay_steps:
            return self.min_lr
        ratio = (step - self.warmup_steps) / (self.decay_steps - self.warmup_steps)
        if self.decay_style == "linear":
            coefficient = 1.0 - ratio
        else:
            coefficient = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return self.min_lr + coefficient * (self.max_lr - self.min_lr)

    def get_lr(self) -> float:
        return self.lr_at(self.num_steps)

    def get_last_lr(self):
        return [self.get_lr()]

    def step(self, increment: Optional[int] = 1):
        self.num_steps += 1 if increment is None else increment
        self._apply()

    def _apply(self):
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)

    def state_dict(self) -> dict:
        return {"num_steps": self.num_steps, "max_lr": self.max_lr, "min_lr": self.min_lr,
                "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps, "decay_style": self.decay_style}

    def load_state_dict(self, state: dict):
        # The schedule's shape comes from this run's flags (a resumed run may extend training); only the
        # position is restored.
        self.num_steps = int(state["num_steps"])
        self._apply()
