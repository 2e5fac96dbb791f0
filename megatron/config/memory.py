"""Precision, ZeRO and activation recomputation: the settings that trade memory for speed or accuracy.

Most of these are owned by DeepSpeed; the flags exist so that a run without a JSON file can set them,
and so that a flag contradicting the JSON is caught (see deepspeed_json.py).
"""

from dataclasses import dataclass
from typing import Optional

from megatron.config.fields import option

OFFLOAD_DEVICES = ("none", "cpu")


@dataclass(frozen=True)
class PrecisionConfig:
    """Mixed precision. fp16 uses DeepSpeed's dynamic loss scaling unless loss_scale is set."""

    bf16: bool = option(False, "bfloat16 mixed precision (DeepSpeed bf16.enabled).")
    fp16: bool = option(False, "float16 mixed precision with loss scaling (DeepSpeed fp16.enabled).")
    loss_scale: Optional[float] = option(None, "Static fp16 loss scale; unset means dynamic scaling "
                                         "(DeepSpeed fp16.loss_scale 0).", minimum=0)
    # DeepSpeed's default 2**16, not Megatron's 2**32: the engine is DeepSpeed's, and 16 fewer halvings
    # means 16 fewer skipped steps at the start of an fp16 run.
    initial_loss_scale: float = option(2.0 ** 16, "Initial dynamic loss scale, a power of 2 (DeepSpeed "
                                       "fp16.initial_scale_power = log2 of it).", minimum=1)
    loss_scale_window: int = option(1000, "Steps without overflow before the dynamic scale doubles.",
                                    minimum=1)
    hysteresis: int = option(2, "Overflows tolerated before the dynamic scale halves.", minimum=1)
    min_loss_scale: float = option(1.0, "Floor of the dynamic loss scale.", minimum=0)


@dataclass(frozen=True)
class ZeroConfig:
    """DeepSpeed ZeRO partitioning (usually set in the JSON's zero_optimization block)."""

    stage: int = option(0, "ZeRO stage: 0 none, 1 optimizer states, 2 + gradients, 3 + parameters.",
                        flag="--zero-stage", choices=(0, 1, 2, 3))
    offload_optimizer: str = option("none", "Keep optimizer states (and the step) on the CPU; needs ZeRO "
                                    ">= 1 and DeepSpeedCPUAdam.", choices=OFFLOAD_DEVICES)
    offload_param: str = option("none", "Keep parameters on the CPU between uses; needs ZeRO-3.",
                                choices=OFFLOAD_DEVICES)


@dataclass(frozen=True)
class RecomputeConfig:
    """Activation recomputation, applied with deepspeed.checkpointing (its `configure` arguments)."""

    recompute_granularity: Optional[str] = option(
        None, "full: recompute each transformer layer in backward; selective: recompute only the "
        "attention core (Megatron's selective recomputation). Unset: keep all activations.",
        choices=("full", "selective"), const_aliases={"--checkpoint-activations": "full"})
    partition_activations: bool = option(False, "Split saved layer inputs across tensor-parallel ranks "
                                         "(needs full recomputation).")
    checkpoint_in_cpu: bool = option(False, "Move saved layer inputs to CPU memory.")
    contiguous_checkpointing: bool = option(
        False, "Copy saved inputs into one preallocated buffer (needs --partition-activations).",
        aliases=("--contigious-checkpointing",))  # Megatron-DeepSpeed's spelling, kept for its scripts
    synchronize_each_layer: bool = option(False, "Synchronize the device before and after each "
                                          "recomputed layer (debugging).")
    profile_backward: bool = option(False, "Log forward/backward time of each recomputed layer.")

    @property
    def checkpoint_activations(self) -> bool:
        """Megatron-DeepSpeed's name for full recomputation; derived so there is one source of truth."""
        return self.recompute_granularity == "full"
