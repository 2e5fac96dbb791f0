"""Activation recomputation through DeepSpeed's checkpointing, with the one rule it does not enforce.

``deepspeed.checkpointing.checkpoint`` saves only a function's inputs and reruns the function in backward,
restoring the default and the tracked TP generators first, so dropout masks replay exactly. The caller
configures it once (``deepspeed.checkpointing.configure(mpu, partition_activations=..., checkpoint_in_cpu=...)``).

The rule: with ``partition_activations`` DeepSpeed keeps 1/tp of each saved input per TP rank and all-gathers
it for recomputation, which is only correct when the input is identical on every TP rank. Inputs that differ
(a sequence-parallel slice, this rank's attention heads) come back silently wrong (measured: wrong gradients,
no exception). So each call site says whether its inputs are replicated, and sharded ones refuse
partition_activations.

Granularities (Megatron's):
    "full"       each transformer layer keeps only its input and is recomputed in backward;
    "selective"  only the attention core softmax(q k^T) v is recomputed: its [b, np, s, s] probabilities are
                 the largest activation and the cheapest to recompute.
"""

from typing import Optional

import deepspeed
import torch
from deepspeed.runtime.activation_checkpointing import checkpointing as ds_checkpointing

RECOMPUTE_GRANULARITIES = (None, "full", "selective")


def validate_recompute_settings(recompute_granularity: Optional[str], partition_activations: bool,
                                sequence_parallel: bool) -> None:
    if recompute_granularity not in RECOMPUTE_GRANULARITIES:
        raise ValueError(f"recompute_granularity {recompute_granularity!r} is not one of "
                         f"{RECOMPUTE_GRANULARITIES}")
    if not partition_activations:
        return
    if recompute_granularity != "full":
        raise ValueError(f"partition_activations needs recompute_granularity='full' (got "
                         f"{recompute_granularity!r}): selective recomputation saves this rank's attention "
                         f"heads, which differ across TP ranks and cannot be partitioned; drop "
                         f"--partition-activations or use --recompute-granularity full")
    if sequence_parallel:
        raise ValueError("partition_activations cannot be combined with sequence_parallel: each TP rank's layer "
                         "input is a different slice of the sequence, and DeepSpeed's partitioning assumes "
                         "it is replicated (gradients would be silently wrong); drop --partition-activations "
                         "(sequence parallelism already splits the saved inputs across TP ranks)")


def _deepspeed_checkpoint(function, *args):
    """deepspeed.checkpointing.checkpoint with only the tensor arguments passed through it.

    With partition_activations, DeepSpeed 0.19 re-merges non-tensor arguments wrongly in backward (each None
    comes back twice and the function gets too many arguments), so the others are bound here instead.
    """
    fixed = {index: arg for index, arg in enumerate(args) if not torch.is_tensor(arg)}
    tensors = [arg for arg in args if torch.is_tensor(arg)]
    if ds_checkpointing.CPU_CHECKPOINT and not ds_checkpointing.PARTITION_ACTIVATIONS and \
            any(t.is_floating_point() and t.device.type == "cpu" for t in tensors):
        # DeepSpeed "copies" the input to the CPU (a no-op for a CPU tensor, same object), then empties the
        # original and keeps the "copy": the saved input is lost and recomputation fails.
        raise ValueError("deepspeed.checkpointing is configured with checkpoint_in_cpu=True and "
                         "partition_activations=False while the activations already live on the CPU; "
                         "DeepSpeed 0.19 then loses the saved layer inputs. Drop --checkpoint-in-cpu (it "
                         "has nothing to move here) or add --partition-activations")

    def run(*tensor_args):
        remaining = iter(tensor_args)
        return function(*(fixed[i] if i in fixed else next(remaining) for i in range(len(args))))

    return deepspeed.checkpointing.checkpoint(run, *tensors)


def checkpoint_replicated_inputs(function, *args):
    """Recompute ``function(*args)`` in backward; every tensor in ``args`` is identical on all TP ranks."""
    return _deepspeed_checkpoint(function, *args)


def checkpoint_sharded_inputs(function, *args):
    """Recompute ``function(*args)`` in backward; its tensors differ across TP ranks."""
    if ds_checkpointing.PARTITION_ACTIVATIONS:
        raise ValueError("deepspeed.checkpointing is configured with partition_activations=True, but this "
                         "recomputed block's inputs differ across tensor-parallel ranks (sequence parallelism "
                         "or selective recomputation), which DeepSpeed would restore silently wrong; configure "
                         "partition_activations=False")
    return _deepspeed_checkpoint(function, *args)
