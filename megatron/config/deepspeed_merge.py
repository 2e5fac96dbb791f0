"""merge_deepspeed_json: flags + DeepSpeed JSON -> resolved DeepSpeed-owned fields and one merged dict.

Batch sizes, ZeRO, precision, clipping, activation checkpointing and universal loading are merged here;
the optimizer and scheduler blocks in deepspeed_optimizer.py. The reconciliation rule itself is
`Merge.reconcile` in deepspeed_json.py.
"""

import json
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from megatron.config.deepspeed_json import AUTO, Merge, as_bool, as_float, as_int
from megatron.config.deepspeed_optimizer import merge_optimizer, merge_scheduler
from megatron.config.errors import ConfigError
from megatron.config.training import resolve_batch


def merge_deepspeed_json(explicit: Mapping[str, Any], settings: Mapping[str, Any], ds_json: Mapping[str, Any],
                         data_parallel_size: int, *, source: str = "the DeepSpeed JSON",
                         spelling: Optional[Mapping[str, str]] = None,
                         flag_of: Callable[[str], str] = lambda name: "--" + name.replace("_", "-"),
                         notes: Optional[List[str]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Merge flags with a DeepSpeed JSON.

    explicit: field -> value for the flags the user typed. settings: every field's value before the merge
    (defaults, model-family preset, explicit flags). Returns (field -> resolved value for every field the
    JSON can own, the merged DeepSpeed dict). Raises ConfigError on any contradiction. Tolerated settings
    without effect (loss scaling flags without fp16) are appended to `notes`.
    """
    merge = Merge(explicit, settings, ds_json, source, spelling or {}, flag_of)
    merge.notes = notes if notes is not None else []
    _merge_batch(merge, data_parallel_size)
    _merge_zero(merge)
    _merge_precision(merge)
    merge.reconcile("clip_grad", ("gradient_clipping",), from_json=as_float)
    merge_optimizer(merge)
    merge_scheduler(merge)
    _merge_activation_checkpointing(merge)
    merge.reconcile("universal_checkpoint", ("checkpoint", "load_universal"), from_json=as_bool,
                    write=bool(merge.current("universal_checkpoint")))
    return merge.resolved, merge.ds


def _merge_batch(merge: Merge, data_parallel_size: int) -> None:
    keys = {"micro": "train_micro_batch_size_per_gpu", "global": "train_batch_size",
            "grad_acc": "gradient_accumulation_steps"}
    fields = {"micro": "micro_batch_size", "global": "global_batch_size",
              "grad_acc": "gradient_accumulation_steps"}
    given, labels = {}, {}
    for part, key in keys.items():
        name = fields[part]
        raw = merge.ds.get(key, AUTO)
        in_json = raw != AUTO
        json_value = as_int(raw, key) if in_json else None
        if in_json and name in merge.explicit and merge.explicit[name] != json_value:
            raise ConfigError(f"{merge.shown_flag(name)} contradicts {key}={json_value} in {merge.source}; "
                              f"drop one")
        if name in merge.explicit:
            given[part], labels[part] = merge.explicit[name], merge.flag(name) + " {}"
        elif in_json:
            given[part], labels[part] = json_value, key + "={} in " + merge.source.replace("{", "{{")
        else:
            given[part], labels[part] = None, name + "={}"  # only ever shown once derived
    micro, global_batch, grad_acc = resolve_batch(given["micro"], given["global"], given["grad_acc"],
                                                  data_parallel_size, labels)
    for part, value in (("micro", micro), ("global", global_batch), ("grad_acc", grad_acc)):
        merge.ds[keys[part]] = value
        merge.resolved[fields[part]] = value


def _offload_device(raw: Any, where: str) -> str:
    if raw not in ("none", "cpu"):
        raise ConfigError(f"{where}={json.dumps(raw)} is not supported here; use \"none\" or \"cpu\"")
    return raw


def _merge_zero(merge: Merge) -> None:
    zero = merge.node("zero_optimization")
    for legacy in ("cpu_offload", "cpu_offload_param"):
        if zero is not None and legacy in zero:
            raise ConfigError(f"zero_optimization.{legacy} in {merge.source} is deprecated by DeepSpeed; "
                              f"write offload_optimizer / offload_param: {{\"device\": \"cpu\"}} instead")
    merge.reconcile("stage", ("zero_optimization", "stage"), from_json=as_int)
    for name in ("offload_optimizer", "offload_param"):
        merge.reconcile(name, ("zero_optimization", name, "device"), from_json=_offload_device,
                        write=merge.current(name) != "none")


def _merge_precision(merge: Merge) -> None:
    # DeepSpeed reads "bf16" and, for old configs, "bfloat16".
    bf16_key = "bfloat16" if "bfloat16" in merge.ds and "bf16" not in merge.ds else "bf16"
    bf16 = merge.reconcile("bf16", (bf16_key, "enabled"), from_json=as_bool, write=False)
    fp16 = merge.reconcile("fp16", ("fp16", "enabled"), from_json=as_bool, write=False)
    for name, other in (("bf16", "fp16"), ("fp16", "bf16")):
        if merge.explicit.get(name) and merge.resolved[other] and other not in merge.explicit:
            other_key = bf16_key if other == "bf16" else other
            raise ConfigError(f"--{name} contradicts {other_key}.enabled=true in {merge.source}; drop one")
    if bf16:
        merge.node(bf16_key, create=True)["enabled"] = True
    loss_scaling = ("loss_scale", "initial_loss_scale", "loss_scale_window", "hysteresis", "min_loss_scale")
    if not fp16:
        # Megatron-DeepSpeed accepted these with bf16 (its bf16 scripts pass --loss-scale): say so, do not fail.
        dtype = "bf16" if bf16 else "fp32"
        for name in loss_scaling:
            if name in merge.explicit:
                merge.notes.append(f"{merge.shown_flag(name)} has no effect: loss scaling applies to fp16 only, "
                                   f"and this run is {dtype}")
        return
    merge.node("fp16", create=True)["enabled"] = True
    merge.reconcile("loss_scale", ("fp16", "loss_scale"),
                    from_json=lambda raw, where: as_float(raw, where) or None, to_json=lambda v: v)
    merge.node("fp16").setdefault("loss_scale", 0)  # 0 is DeepSpeed's "dynamic"; say it explicitly
    merge.reconcile("initial_loss_scale", ("fp16", "initial_scale_power"),
                    from_json=lambda raw, where: 2.0 ** as_int(raw, where), to_json=_scale_power)
    merge.reconcile("loss_scale_window", ("fp16", "loss_scale_window"), from_json=as_int)
    merge.reconcile("hysteresis", ("fp16", "hysteresis"), from_json=as_int)
    merge.reconcile("min_loss_scale", ("fp16", "min_loss_scale"), from_json=as_float)


def _scale_power(initial_loss_scale: float) -> int:
    power = math.log2(initial_loss_scale) if initial_loss_scale > 0 else 0.5
    if power != int(power):
        raise ConfigError(f"--initial-loss-scale {initial_loss_scale} is not a power of 2; DeepSpeed takes "
                          f"fp16.initial_scale_power = log2 of it")
    return int(power)


# RecomputeConfig field -> key in DeepSpeed's activation_checkpointing block.
ACTIVATION_CHECKPOINTING_KEYS = {
    "partition_activations": "partition_activations",
    "checkpoint_in_cpu": "cpu_checkpointing",
    "contiguous_checkpointing": "contiguous_memory_optimization",
    "synchronize_each_layer": "synchronize_checkpoint_boundary",
    "profile_backward": "profile",
}


def _merge_activation_checkpointing(merge: Merge) -> None:
    write = merge.current("recompute_granularity") == "full" or "activation_checkpointing" in merge.ds
    for name, key in ACTIVATION_CHECKPOINTING_KEYS.items():
        merge.reconcile(name, ("activation_checkpointing", key), from_json=as_bool, write=write)
    if merge.resolved["contiguous_checkpointing"] and merge.settings.get("num_layers"):
        # DeepSpeed sizes the contiguous buffer from this; one checkpoint per layer.
        merge.node("activation_checkpointing", create=True).setdefault(
            "number_checkpoints", merge.settings["num_layers"])
