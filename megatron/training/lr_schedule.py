"""Megatron's learning-rate schedule: linear warmup, then constant / linear / cosine decay to min_lr.

Counted in optimizer steps (iterations) by default. Runs sized in samples or tokens (Megatron's
--train-samples, Megatron-DeepSpeed's --lr-*-tokens) count warmup and decay in that unit instead: each step
adds ``samples_per_step`` samples (the global batch; the loop updates it during a batch-size ramp-up) and
``samples_per_step * tokens_per_sample`` tokens. DeepSpeed calls ``step()`` after every optimizer step that
was not skipped for an fp16 overflow, so the schedule advances exactly with the parameters. The position is
saved in checkpoints through ``state_dict``.
"""

import math
from typing import Optional

from torch.optim import Optimizer

DECAY_STYLES = ("constant", "linear", "cosine")
UNITS = ("steps", "samples", "tokens")


class WarmupDecayLR:
    def __init__(self, optimizer: Optimizer, *, max_lr: float, min_lr: float, warmup_steps: int,
                 decay_steps: int, decay_style: str, warmup_unit: str = "steps", decay_unit: str = "steps",
                 samples_per_step: int = 1, tokens_per_sample: int = 1, use_checkpoint_shape: bool = False):
        if warmup_unit not in UNITS or decay_unit not in UNITS or (warmup_unit == "steps") != (decay_unit == "steps"):
            raise ValueError(f"warmup unit {warmup_unit!r} and decay unit {decay_unit!r}: both steps, or each "
                             f"samples or tokens")
        self.warmup_unit, self.decay_unit = warmup_unit, decay_unit
        self.samples_per_step, self.tokens_per_sample = samples_per_step, tokens_per_sample
        self.use_checkpoint_shape = use_checkpoint_shape
        self.num_samples = self.num_tokens = 0
        # Where warmup ends, in the decay's unit (Megatron-DeepSpeed measures it when warmup ends).
        self._warmup_end = warmup_steps * self._per(warmup_unit) // self._per(decay_unit)
        if decay_style not in DECAY_STYLES:
            raise ValueError(f"lr decay style {decay_style!r} is not one of {DECAY_STYLES}")
        if not 0.0 <= min_lr <= max_lr:
            raise ValueError(f"need 0 <= min_lr ({min_lr}) <= lr ({max_lr})")
        if warmup_steps < 0 or (decay_style != "constant" and decay_steps <= self._warmup_end):
            raise ValueError(f"lr decay iterations ({decay_steps}) must exceed warmup iterations ({warmup_steps}); "
                             f"raise --lr-decay-iters or lower the warmup")
        self.optimizer = optimizer
        self.max_lr, self.min_lr = max_lr, min_lr
        self.warmup_steps, self.decay_steps, self.decay_style = warmup_steps, decay_steps, decay_style
        self.num_steps = 0
        self._apply()

    def _per(self, unit: str) -> int:
        """Tokens in one unit (samples and tokens); 1 for steps, which never mix with the others."""
        return self.tokens_per_sample if unit == "samples" else 1

    def position(self, unit: str) -> int:
        return {"steps": self.num_steps, "samples": self.num_samples, "tokens": self.num_tokens}[unit]

    def lr_at(self, step: int, decay_position: Optional[int] = None) -> float:
        """LR at warmup position `step` (in the warmup unit) and decay position (the same by default)."""
        decay_position = step if decay_position is None else decay_position
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self.max_lr * step / self.warmup_steps
        if self.decay_style == "constant":
            return self.max_lr
        if decay_position > self.decay_steps:
            return self.min_lr
        ratio = (decay_position - self._warmup_end) / (self.decay_steps - self._warmup_end)
        if self.decay_style == "linear":
            coefficient = 1.0 - ratio
        else:
            coefficient = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return self.min_lr + coefficient * (self.max_lr - self.min_lr)

    def get_lr(self) -> float:
        return self.lr_at(self.position(self.warmup_unit), self.position(self.decay_unit))

    def get_last_lr(self):
        return [self.get_lr()]

    def step(self, increment: Optional[int] = 1):
        steps = 1 if increment is None else increment
        self.num_steps += steps
        self.num_samples += steps * self.samples_per_step
        self.num_tokens += steps * self.samples_per_step * self.tokens_per_sample
        self._apply()

    def _apply(self):
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)

    def state_dict(self) -> dict:
        return {"num_steps": self.num_steps, "num_samples": self.num_samples, "num_tokens": self.num_tokens,
                "max_lr": self.max_lr, "min_lr": self.min_lr, "warmup_steps": self.warmup_steps,
                "decay_steps": self.decay_steps, "decay_style": self.decay_style, "warmup_unit": self.warmup_unit,
                "decay_unit": self.decay_unit}

    def load_state_dict(self, state: dict):
        # By default the schedule's shape comes from this run's flags (a resumed run may extend training;
        # Megatron's --override-opt_param-scheduler) and only the position is restored.
        # --use-checkpoint-opt_param-scheduler takes the shape from the checkpoint instead.
        self.num_steps = int(state["num_steps"])
        self.num_samples = int(state.get("num_samples", self.num_steps * self.samples_per_step))
        self.num_tokens = int(state.get("num_tokens", self.num_samples * self.tokens_per_sample))
        if self.use_checkpoint_shape:
            self.max_lr, self.min_lr = float(state["max_lr"]), float(state["min_lr"])
            self.warmup_steps, self.decay_steps = int(state["warmup_steps"]), int(state["decay_steps"])
            self.decay_style = state["decay_style"]
            self.warmup_unit = state.get("warmup_unit", "steps")
            self.decay_unit = state.get("decay_unit", "steps")
            self._warmup_end = self.warmup_steps * self._per(self.warmup_unit) // self._per(self.decay_unit)
        self._apply()
