"""Merging the JSON's optimizer and scheduler blocks with the optimizer and LR-schedule flags.

Without these blocks the training code builds the optimizer (Megatron param groups + AdamW) and the
Megatron LR schedule from TrainingConfig, and nothing is written here. With them DeepSpeed builds both; the
flags must then agree with the block, fill the parameters it leaves out, and a flag that would have no
effect under it is an error.
"""

import json

from megatron.config.deepspeed_json import Merge, as_float, as_int, same
from megatron.config.errors import ConfigError

# DeepSpeed optimizer types (lower-cased) whose params take Adam's betas and eps.
ADAM_LIKE = ("adam", "adamw", "lamb", "onebitadam", "zerooneadam", "onebitlamb")
ADAM_FIELDS = ("adam_beta1", "adam_beta2", "adam_eps")
SCHEDULE_FIELDS = ("lr_warmup_iters", "lr_warmup_fraction", "lr_decay_style", "lr_decay_iters", "min_lr")
# DeepSpeed scheduler type -> the Megatron decay style it implements.
SCHEDULER_DECAY_STYLE = {"WarmupLR": "constant", "WarmupDecayLR": "linear", "WarmupCosineLR": "cosine"}


def _block_type(merge: Merge, block: str) -> str:
    kind = merge.ds[block].get("type") if isinstance(merge.ds[block], dict) else None
    if not isinstance(kind, str):
        raise ConfigError(f"{block} in {merge.source} needs a \"type\" string, got "
                          f"{json.dumps(merge.ds[block])}")
    return kind


def merge_optimizer(merge: Merge) -> None:
    if "optimizer" not in merge.ds:
        return
    kind = _block_type(merge, "optimizer")
    merge.reconcile("lr", ("optimizer", "params", "lr"), from_json=as_float)
    merge.reconcile("weight_decay", ("optimizer", "params", "weight_decay"), from_json=as_float)
    if kind.lower() not in ADAM_LIKE:
        merge.refuse_flags(ADAM_FIELDS, f"with optimizer type {kind} in {merge.source}")
        return
    merge.reconcile("adam_eps", ("optimizer", "params", "eps"), from_json=as_float)
    params = merge.node("optimizer", "params", create=True)
    betas = params.get("betas")
    if betas is None:
        params["betas"] = [merge.current("adam_beta1"), merge.current("adam_beta2")]
        merge.resolved.update(adam_beta1=params["betas"][0], adam_beta2=params["betas"][1])
        return
    if not (isinstance(betas, list) and len(betas) == 2):
        raise ConfigError(f"optimizer.params.betas in {merge.source} must be a list of two numbers, "
                          f"got {json.dumps(betas)}")
    for index, name in enumerate(("adam_beta1", "adam_beta2")):
        value = as_float(betas[index], f"optimizer.params.betas[{index}]")
        if name in merge.explicit and not same(merge.explicit[name], value):
            raise ConfigError(f"{merge.shown_flag(name)} contradicts optimizer.params.betas[{index}]={value} "
                              f"in {merge.source}; drop one")
        merge.resolved[name] = value


def merge_scheduler(merge: Merge) -> None:
    if "scheduler" not in merge.ds:
        return
    kind = _block_type(merge, "scheduler")
    style = SCHEDULER_DECAY_STYLE.get(kind)
    if style is None:
        merge.refuse_flags(SCHEDULE_FIELDS, f"with scheduler type {kind} in {merge.source} (only "
                           f"{', '.join(SCHEDULER_DECAY_STYLE)} map onto Megatron's schedule)")
        return
    if "lr_decay_style" in merge.explicit and merge.explicit["lr_decay_style"] != style:
        raise ConfigError(f"{merge.shown_flag('lr_decay_style')} contradicts scheduler.type={kind} "
                          f"({style} decay) in {merge.source}; drop one")
    merge.resolved["lr_decay_style"] = style
    params = ("scheduler", "params")
    if kind != "WarmupLR":
        if merge.current("lr_decay_iters") is None:
            merge.settings["lr_decay_iters"] = merge.current("train_iters")
        merge.reconcile("lr_decay_iters", params + ("total_num_steps",), from_json=as_int)
    else:
        merge.refuse_flags(("lr_decay_iters", "min_lr"), f"with scheduler type WarmupLR in {merge.source} "
                           f"(it holds the peak LR after warmup)")
    _merge_warmup(merge, params)
    if kind in ("WarmupLR", "WarmupDecayLR"):
        merge.reconcile("lr", params + ("warmup_max_lr",), from_json=as_float)
    if kind == "WarmupDecayLR":
        # DeepSpeed's linear decay ends at warmup_min_lr (which is also where its warmup starts).
        merge.reconcile("min_lr", params + ("warmup_min_lr",), from_json=as_float)
    if kind == "WarmupCosineLR" and merge.current("lr"):
        lr = merge.current("lr")  # the cosine floor is a ratio of the optimizer's LR
        merge.reconcile("min_lr", params + ("cos_min_ratio",),
                        from_json=lambda raw, where: as_float(raw, where) * lr, to_json=lambda v: v / lr)


def _merge_warmup(merge: Merge, params) -> None:
    fraction = merge.current("lr_warmup_fraction")
    if fraction is not None:
        # Megatron's rule: warmup steps = fraction * decay steps; DeepSpeed wants the step count.
        decay = merge.current("lr_decay_iters") or merge.current("train_iters") or 0
        merge.settings["lr_warmup_iters"] = int(fraction * decay)
        warmup = merge.reconcile("lr_warmup_iters", params + ("warmup_num_steps",), from_json=as_int)
        if not same(warmup, int(fraction * decay)):
            raise ConfigError(f"{merge.shown_flag('lr_warmup_fraction')} gives {int(fraction * decay)} warmup "
                              f"steps, contradicting scheduler.params.warmup_num_steps={warmup} in "
                              f"{merge.source}; drop one")
        merge.resolved["lr_warmup_iters"] = 0  # the fraction stays the one statement of the warmup
    else:
        warmup = merge.reconcile("lr_warmup_iters", params + ("warmup_num_steps",), from_json=as_int)
    if warmup < 1:
        raise ConfigError(f"scheduler {merge.ds['scheduler']['type']} in {merge.source} needs "
                          f"warmup_num_steps >= 1 (DeepSpeed's rule), but the warmup is {warmup} steps: pass "
                          f"--lr-warmup-iters N or set scheduler.params.warmup_num_steps")
