"""TrainingConfig: batch sizes, iteration counts, optimizer hyper-parameters and the LR schedule."""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from megatron.config.errors import ConfigError
from megatron.config.fields import option

LR_DECAY_STYLES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class TrainingConfig:
    """What one training run does. Batch sizes obey DeepSpeed's rule
    global_batch_size == micro_batch_size * gradient_accumulation_steps * data_parallel_size."""

    micro_batch_size: int = option(1, "Samples per rank per forward/backward pass.", minimum=1)
    global_batch_size: Optional[int] = option(
        None, "Samples per optimizer step over all data-parallel ranks.", minimum=1,
        derived="micro_batch_size * gradient_accumulation_steps * data_parallel_size")
    gradient_accumulation_steps: Optional[int] = option(
        None, "Micro-batches per optimizer step (DeepSpeed's gradient_accumulation_steps; Megatron's "
        "number of micro-batches).", cli=False, minimum=1,
        derived="global_batch_size / (micro_batch_size * data_parallel_size), or the JSON's value")
    train_iters: int = option(None, "Optimizer steps to train for.", minimum=1, required=True,
                              derived="from --train-samples / --train-tokens when one is given")
    train_samples: Optional[int] = option(None, "Train for this many samples (Megatron: instead of "
                                          "--train-iters; iterations = samples / global batch).", minimum=1)
    train_tokens: Optional[int] = option(None, "Stop once this many tokens (samples x seq length) are consumed "
                                         "(Megatron-DeepSpeed; with --train-samples, whichever comes first).",
                                         minimum=1)
    rampup_batch_size: Optional[Tuple[int, ...]] = option(
        None, "`start increment samples`: grow the global batch from start by increment, evenly over the first "
        "samples, to --global-batch-size (Megatron). Done by varying the micro-batches per step.")
    eval_interval: int = option(1000, "Run evaluation every this many steps.", minimum=1)
    eval_iters: int = option(100, "Batches per evaluation.", minimum=0)
    skip_train: bool = option(
        False, "Evaluation only (Megatron's flag): load the checkpoint in --load, score it on the validation split "
        "(--eval-iters batches; --split 0,1,0 takes them from the start of all of --data-path, e.g. another "
        "corpus) and print loss and perplexity, the figure training's validation logs; no optimizer step, "
        "nothing saved.",
        aliases=("--eval-only",))
    seed: int = option(1234, "Random seed (model init, dropout, data order).")
    exit_interval: Optional[int] = option(None, "Stop after a step whose number is a multiple of this.",
                                          minimum=1)
    exit_duration_in_mins: Optional[float] = option(None, "Stop (after saving) once the run has lasted "
                                                    "this many minutes.", minimum=0)
    max_skipped_steps: int = option(
        3, "Stop the run (exit code 3, nothing saved) after this many consecutive steps with a non-finite loss "
        "under fp16 dynamic loss scaling; without loss scaling (fp32, bf16) the first non-finite loss or grad "
        "norm stops it.", minimum=1)
    kill_switch_file: Optional[str] = option(None, "Save and stop (exit code 75) at the end of the step in "
                                             "which this file exists on any rank.")
    exit_signal_handler: bool = option(
        True, "On SIGTERM/SIGINT save at the end of the current step and exit with code 75 (on by default "
        "here; Megatron's switch).", const_aliases={"--no-exit-signal-handler": False})
    clip_grad: float = option(1.0, "Clip the global gradient norm to this (0 disables); DeepSpeed's "
                              "gradient_clipping.", minimum=0)
    weight_decay: float = option(0.01, "AdamW weight decay (not applied to biases and norms).", minimum=0)
    adam_beta1: float = option(0.9, "Adam beta1.", minimum=0)
    adam_beta2: float = option(0.999, "Adam beta2.", minimum=0)
    adam_eps: float = option(1e-8, "Adam epsilon.", minimum=0)
    lr: Optional[float] = option(None, "Peak learning rate; required unless the DeepSpeed JSON's "
                                 "optimizer block sets params.lr.", minimum=0)
    min_lr: float = option(0.0, "Learning rate at the end of the decay.", minimum=0)
    lr_warmup_iters: int = option(0, "Linear warmup steps from 0 to --lr.", minimum=0)
    lr_warmup_fraction: Optional[float] = option(
        None, "Warmup as a fraction of lr_decay_iters (instead of --lr-warmup-iters).", minimum=0)
    lr_decay_style: str = option("linear", "Decay after warmup.", choices=LR_DECAY_STYLES)
    lr_decay_iters: Optional[int] = option(None, "Steps over which the LR decays to --min-lr.",
                                           minimum=1, derived="train_iters")
    lr_warmup_samples: Optional[int] = option(None, "Warmup counted in samples (Megatron).", minimum=0)
    lr_warmup_tokens: Optional[int] = option(None, "Warmup counted in tokens (Megatron-DeepSpeed).", minimum=0)
    lr_decay_samples: Optional[int] = option(None, "Decay counted in samples (Megatron).", minimum=1,
                                             derived="train_samples, when training is sized in samples")
    lr_decay_tokens: Optional[int] = option(None, "Decay counted in tokens (Megatron-DeepSpeed).", minimum=1)
    override_opt_param_scheduler: bool = option(
        False, "On resume, take the LR schedule's shape from this run's flags (only its position from the "
        "checkpoint). That is what a resume does anyway here; the flag is accepted for Megatron's scripts.",
        flag="--override-opt_param-scheduler")
    use_checkpoint_opt_param_scheduler: bool = option(
        False, "On resume, take the LR schedule's shape (peak, min, warmup, decay) from the checkpoint "
        "instead of the flags (Megatron).", flag="--use-checkpoint-opt_param-scheduler")
    optimizer: str = option("adam", "Optimizer built when the DeepSpeed JSON has no optimizer block: adam "
                            "(AdamW with --weight-decay) or sgd (with --sgd-momentum).", choices=("adam", "sgd"))
    sgd_momentum: float = option(0.9, "SGD momentum (--optimizer sgd).", minimum=0)

    def __post_init__(self):
        if self.lr_decay_iters is None and self.train_iters is not None:
            object.__setattr__(self, "lr_decay_iters", self.train_iters)

    def lr_schedule_plan(self, seq_length: int) -> Tuple[int, str, int, str]:
        """(warmup amount, its unit, decay end, its unit); units are "samples" or "tokens".

        Megatron counts its schedule in samples (an iteration count N is N x global batch); Megatron-DeepSpeed
        may count warmup and decay in tokens. Only a warmup fraction takes the decay's unit."""
        gbs = self.global_batch_size
        if self.lr_decay_tokens is not None:
            decay, decay_unit = self.lr_decay_tokens, "tokens"
        elif self.lr_decay_samples is not None:
            decay, decay_unit = self.lr_decay_samples, "samples"
        else:
            decay, decay_unit = self.lr_decay_iters * gbs, "samples"
        if self.lr_warmup_tokens is not None:
            return self.lr_warmup_tokens, "tokens", decay, decay_unit
        if self.lr_warmup_samples is not None:
            return self.lr_warmup_samples, "samples", decay, decay_unit
        if self.lr_warmup_fraction is not None:
            return int(self.lr_warmup_fraction * decay), decay_unit, decay, decay_unit
        return self.lr_warmup_iters * gbs, "samples", decay, decay_unit

    @property
    def counts_schedule_in_iterations(self) -> bool:
        """True when every length of the run and its schedule is given in iterations."""
        return all(getattr(self, name) is None for name in (
            "train_samples", "train_tokens", "lr_warmup_samples", "lr_warmup_tokens", "lr_decay_samples",
            "lr_decay_tokens", "rampup_batch_size"))

    @property
    def warmup_iters(self) -> int:
        """Warmup steps after resolving --lr-warmup-fraction (Megatron: fraction * decay steps)."""
        if self.lr_warmup_fraction is not None:
            return int(self.lr_warmup_fraction * self.lr_decay_iters)
        return self.lr_warmup_iters


def resolve_batch(micro: Optional[int], global_batch: Optional[int], grad_acc: Optional[int],
                  data_parallel_size: int, labels: Dict[str, str]) -> Tuple[int, int, int]:
    """Complete (micro, global, grad_acc) under global == micro * grad_acc * DP.

    Any two determine the third; all three must agree. A missing micro-batch size that the other two
    cannot determine is 1; a missing grad_acc is then 1 (Megatron: global defaults to micro * DP).
    `labels` holds, per part ("micro", "global", "grad_acc"), a template saying where the number came
    from, e.g. "--micro-batch-size {}" or "train_batch_size={} in ds.json".
    """
    def show(part: str, value: int) -> str:
        return labels[part].format(value)

    dp = data_parallel_size
    for part, value in (("micro", micro), ("global", global_batch), ("grad_acc", grad_acc)):
        if value is not None and value < 1:
            raise ConfigError(f"{show(part, value)} must be >= 1")
    if micro is None and global_batch is not None and grad_acc is not None:
        if global_batch % (grad_acc * dp):
            raise ConfigError(f"{show('global', global_batch)} is not divisible by {show('grad_acc', grad_acc)} "
                              f"x data_parallel_size {dp}: no whole micro-batch size fits; change one of them")
        micro = global_batch // (grad_acc * dp)
    micro = 1 if micro is None else micro
    if global_batch is None:
        grad_acc = 1 if grad_acc is None else grad_acc
        global_batch = micro * grad_acc * dp
    elif grad_acc is None:
        if global_batch % (micro * dp):
            raise ConfigError(f"{show('global', global_batch)} is not divisible by {show('micro', micro)} x "
                              f"data_parallel_size {dp} = {micro * dp}; choose a global batch that is a "
                              f"multiple of {micro * dp}")
        grad_acc = global_batch // (micro * dp)
    elif micro * grad_acc * dp != global_batch:
        raise ConfigError(f"batch sizes disagree: {show('global', global_batch)}, but {show('micro', micro)} x "
                          f"{show('grad_acc', grad_acc)} x data_parallel_size {dp} = {micro * grad_acc * dp}; "
                          f"give only two of the three")
    return micro, global_batch, grad_acc
