"""TensorBoard scalars under Megatron-DeepSpeed's tag names (--tensorboard-tags megatron-deepspeed or both).

Their dashboards and analysis scripts (e.g. universal_checkpointing's tb_analysis) look scalars up by tag.
Megatron-DeepSpeed writes, every --tensorboard-log-interval iterations, each figure three times: against the
iteration, against consumed samples (`<tag> vs samples`) and against consumed tokens (`<tag> vs tokens`);
some figures only when their --log-*-to-tensorboard switch is on. Validation goes under
`lm-loss-validation/lm loss validation` (and its ppl with --log-validation-ppl-to-tensorboard).
"""

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class MegatronDeepSpeedTags:
    """Which optional figures to write; mirrors the LoggingConfig switches of the same names."""
    log_interval: int = 1
    learning_rate: bool = True
    loss_scale: bool = True
    batch_size: bool = False
    world_size: bool = False
    validation_ppl: bool = False
    memory: bool = False

    @classmethod
    def from_logging(cls, logging) -> "MegatronDeepSpeedTags":
        return cls(log_interval=logging.tensorboard_log_interval,
                   learning_rate=logging.log_learning_rate_to_tensorboard,
                   loss_scale=logging.log_loss_scale_to_tensorboard,
                   batch_size=logging.log_batch_size_to_tensorboard,
                   world_size=logging.log_world_size_to_tensorboard,
                   validation_ppl=logging.log_validation_ppl_to_tensorboard,
                   memory=logging.log_memory_to_tensorboard)


class MegatronDeepSpeedWriter:
    def __init__(self, writer, tags: MegatronDeepSpeedTags, world_size: int):
        self.writer, self.tags, self.world_size = writer, tags, world_size

    def _triple(self, tag: str, value: float, iteration: int, samples: int, tokens: int):
        self.writer.add_scalar(tag, value, iteration)
        self.writer.add_scalar(f"{tag} vs samples", value, samples)
        self.writer.add_scalar(f"{tag} vs tokens", value, tokens)

    def train_step(self, iteration: int, *, samples: int, tokens: int, loss: float, lr: float, batch_size: int,
                   grad_norm: Optional[float], loss_scale: Optional[float], memory: Optional[dict] = None):
        if iteration % self.tags.log_interval:
            return
        self.writer.add_scalar("steps-vs-samples/y=steps,x=samples", iteration, samples)
        self.writer.add_scalar("steps-vs-samples/y=samples,x=steps", samples, iteration)
        self.writer.add_scalar("steps-vs-tokens/y=steps,x=tokens", iteration, tokens)
        self.writer.add_scalar("steps-vs-tokens/y=tokens,x=steps", tokens, iteration)
        if self.tags.learning_rate:
            self._triple("learning-rate/learning-rate", lr, iteration, samples, tokens)
        if self.tags.batch_size:
            self._triple("batch-size/batch-size", batch_size, iteration, samples, tokens)
        self._triple("lm-loss-training/lm loss", loss, iteration, samples, tokens)
        if loss_scale is not None and self.tags.loss_scale:
            self._triple("loss-scale/loss-scale", loss_scale, iteration, samples, tokens)
        if self.tags.world_size:
            self._triple("world-size/world-size", self.world_size, iteration, samples, tokens)
        if grad_norm is not None:
            self._triple("grad-norm/grad-norm", grad_norm, iteration, samples, tokens)
        if self.tags.memory and memory:
            for key, value in memory.items():  # CPU: peak RSS; GPU: allocated bytes (Megatron's mem-* tags)
                self.writer.add_scalar(key.replace("_", "-"), value, iteration)

    def validation(self, iteration: int, *, samples: int, tokens: int, loss: float, ppl: float):
        self._triple("lm-loss-validation/lm loss validation", loss, iteration, samples, tokens)
        if self.tags.validation_ppl:
            self._triple("lm-loss-validation/lm loss validation ppl", ppl, iteration, samples, tokens)
