"""How long a run is and how its LR schedule is counted: iterations, samples or tokens, and batch ramp-up.

Megatron sizes runs in iterations (--train-iters) or samples (--train-samples); Megatron-DeepSpeed adds a
token budget (--train-tokens, a stop condition: whichever of samples and tokens is reached first) and a
schedule counted in tokens (--lr-warmup-tokens, --lr-decay-tokens). Internally the schedule counts samples
and tokens consumed, as Megatron's does: an iteration count N means N x global batch samples.

--rampup-batch-size `start increment ramp_samples` grows the global batch from `start` by `increment` in
equal sample intervals over the first `ramp_samples` samples (Megatron's rule); DeepSpeed engines keep a
fixed micro-batch, so the loop changes the number of micro-batches per step.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from megatron.config.errors import ConfigError


@dataclass(frozen=True)
class BatchRampup:
    start: int
    increment: int
    ramp_samples: int
    final: int

    def batch_size_at(self, consumed_samples: int) -> int:
        """The global batch of the step that starts after `consumed_samples` samples (Megatron's formula)."""
        steps = (self.final - self.start) // self.increment
        if steps == 0 or consumed_samples >= self.ramp_samples:
            return self.final
        per_increment = self.ramp_samples / steps
        return min(self.final, self.start + int(consumed_samples / per_increment) * self.increment)


def rampup_of(training) -> Optional[BatchRampup]:
    if not training.rampup_batch_size:
        return None
    start, increment, ramp = training.rampup_batch_size
    return BatchRampup(start, increment, ramp, training.global_batch_size)


def iterations_for_samples(samples: int, global_batch: int, rampup: Optional[BatchRampup]) -> int:
    """Megatron's count: whole global batches (the last partial one is not run)."""
    iterations, consumed = 0, 0
    if rampup is not None:
        while consumed < rampup.ramp_samples:
            batch = rampup.batch_size_at(consumed)
            if consumed + batch > samples:
                return iterations
            consumed += batch
            iterations += 1
    return iterations + (samples - consumed) // global_batch


def check_rampup(values: Tuple[int, ...], global_batch: int, micro: int, data_parallel: int,
                 pipeline: int) -> None:
    if len(values) != 3 or any(v < 0 for v in values) or values[0] < 1 or values[1] < 1:
        raise ConfigError(f"--rampup-batch-size {' '.join(map(str, values))}: give three numbers, `start "
                          f"increment ramp_samples`, e.g. --rampup-batch-size 32 32 1000000")
    start, increment, _ = values
    unit = micro * data_parallel
    if start > global_batch or (global_batch - start) % increment:
        raise ConfigError(f"--rampup-batch-size: the global batch {global_batch} minus the start {start} must be "
                          f"a non-negative multiple of the increment {increment}")
    if start % unit or increment % unit:
        raise ConfigError(f"--rampup-batch-size: start {start} and increment {increment} must be multiples of "
                          f"micro batch {micro} x data-parallel {data_parallel} = {unit} (each step runs whole "
                          f"micro-batches on every rank)")
    if pipeline > 1:
        raise ConfigError("--rampup-batch-size with --pipeline-model-parallel-size > 1 is not supported: the "
                          "pipeline schedules fix the number of micro-batches when the engine is built; ramp "
                          "up without pipeline parallelism, or drop the ramp-up")


def resolve_run_length(settings: Dict[str, Any], explicit: Mapping[str, Any], notes: List[str]) -> None:
    """Fill train_iters from --train-samples / --train-tokens and check the schedule's units (in place)."""
    iters, samples, tokens = (settings.get(k) for k in ("train_iters", "train_samples", "train_tokens"))
    seq, global_batch = settings["seq_length"], settings["global_batch_size"]
    if settings.get("rampup_batch_size"):
        check_rampup(tuple(settings["rampup_batch_size"]), global_batch, settings["micro_batch_size"],
                     settings["data_parallel_size"], settings["pipeline_model_parallel_size"])
        if samples is None and tokens is None:
            raise ConfigError("--rampup-batch-size needs the run sized in samples (--train-samples or "
                              "--train-tokens), as in Megatron")
    if iters is not None and samples is not None:
        raise ConfigError(f"--train-iters {iters} and --train-samples {samples} both set the length of the run; "
                          f"drop one")
    if samples is None and tokens is not None and iters is None and seq:
        samples = settings["train_samples"] = math.ceil(tokens / seq)
        notes.append(f"--train-tokens {tokens} without --train-samples: sized as {samples} samples of "
                     f"{seq} tokens")
    if samples is not None and iters is None and global_batch:
        rampup = None
        if settings.get("rampup_batch_size"):
            start, increment, ramp = settings["rampup_batch_size"]
            rampup = BatchRampup(start, increment, ramp, global_batch)
        settings["train_iters"] = iterations_for_samples(samples, global_batch, rampup)
        if settings["train_iters"] < 1:
            raise ConfigError(f"--train-samples {samples} is less than one global batch of {global_batch}")
    _check_schedule_units(settings, explicit, samples)


def _check_schedule_units(settings: Dict[str, Any], explicit: Mapping[str, Any], samples: Optional[int]) -> None:
    warmups = [f"--{name.replace('_', '-')}" for name in ("lr_warmup_iters", "lr_warmup_samples",
                                                          "lr_warmup_tokens", "lr_warmup_fraction")
               if name in explicit]
    decays = [f"--{name.replace('_', '-')}" for name in ("lr_decay_iters", "lr_decay_samples", "lr_decay_tokens")
              if name in explicit]
    if len(warmups) > 1:
        raise ConfigError(f"{' and '.join(warmups)} each set the LR warmup; keep one")
    if len(decays) > 1:
        raise ConfigError(f"{' and '.join(decays)} each set the LR decay length; keep one")
    if samples is not None and settings.get("lr_decay_samples") is None and not decays:
        settings["lr_decay_samples"] = samples  # Megatron: sample-sized runs decay over all their samples
