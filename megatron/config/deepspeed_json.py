"""Reading a DeepSpeed JSON, and `Merge`: the one rule for reconciling a flag with a JSON value.

The rule: the JSON owns what DeepSpeed owns (JSON_OWNED). A flag the user typed must agree with the JSON
value it shadows, or the merge fails naming both. A key the JSON leaves out is filled from the flags (their
defaults included) and written INTO the merged dict, so deepspeed.initialize and the rest of the code read
the same numbers. DeepSpeed's "auto" counts as left out. The per-area merges are in deepspeed_merge.py and
deepspeed_optimizer.py.
"""

import copy
import json
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from megatron.config.errors import ConfigError

AUTO = "auto"

# Field -> where the JSON states it, for the generated reference (tests check each row is enforced).
JSON_OWNED = (
    ("micro_batch_size", "train_micro_batch_size_per_gpu", ""),
    ("global_batch_size", "train_batch_size", ""),
    ("gradient_accumulation_steps", "gradient_accumulation_steps", "no flag; derived when absent"),
    ("stage", "zero_optimization.stage", ""),
    ("offload_optimizer", "zero_optimization.offload_optimizer.device", "written when not none"),
    ("offload_param", "zero_optimization.offload_param.device", "written when not none"),
    ("bf16", "bf16.enabled (or bfloat16.enabled)", "written when true"),
    ("fp16", "fp16.enabled", "written when true"),
    ("loss_scale", "fp16.loss_scale", "0 = dynamic = unset; fp16 only"),
    ("initial_loss_scale", "fp16.initial_scale_power", "2**power; fp16 only"),
    ("loss_scale_window", "fp16.loss_scale_window", "fp16 only"),
    ("hysteresis", "fp16.hysteresis", "fp16 only"),
    ("min_loss_scale", "fp16.min_loss_scale", "fp16 only"),
    ("clip_grad", "gradient_clipping", ""),
    ("lr", "optimizer.params.lr; scheduler.params.warmup_max_lr", "with those blocks"),
    ("weight_decay", "optimizer.params.weight_decay", "with an optimizer block"),
    ("adam_beta1", "optimizer.params.betas[0]", "Adam-like optimizer types"),
    ("adam_beta2", "optimizer.params.betas[1]", "Adam-like optimizer types"),
    ("adam_eps", "optimizer.params.eps", "Adam-like optimizer types"),
    ("lr_decay_style", "scheduler.type", "WarmupLR=constant, WarmupDecayLR=linear, WarmupCosineLR=cosine"),
    ("lr_warmup_iters", "scheduler.params.warmup_num_steps", "with a scheduler block; must be >= 1"),
    ("lr_decay_iters", "scheduler.params.total_num_steps", "WarmupDecayLR, WarmupCosineLR"),
    ("min_lr", "scheduler.params.warmup_min_lr / cos_min_ratio * lr", "WarmupDecayLR / WarmupCosineLR"),
    ("partition_activations", "activation_checkpointing.partition_activations", ""),
    ("checkpoint_in_cpu", "activation_checkpointing.cpu_checkpointing", ""),
    ("contiguous_checkpointing", "activation_checkpointing.contiguous_memory_optimization", ""),
    ("synchronize_each_layer", "activation_checkpointing.synchronize_checkpoint_boundary", ""),
    ("profile_backward", "activation_checkpointing.profile", ""),
    ("universal_checkpoint", "checkpoint.load_universal", "written when true"),
)


def load_deepspeed_json(path: str) -> Dict[str, Any]:
    """Parse a DeepSpeed JSON file; errors name the file and the line/column."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read DeepSpeed config {path!r}: {error.strerror}; "
                          f"check --deepspeed_config") from None
    try:
        data = json.loads(text, object_pairs_hook=lambda pairs: _no_duplicate_keys(pairs, path))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object, got {type(data).__name__}")
    return data


def _no_duplicate_keys(pairs, path: str) -> Dict[str, Any]:
    # json keeps the last of two equal keys without a word; two "zero_optimization" blocks are a mistake.
    result = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError(f"{path}: key {key!r} appears twice in one JSON object; keep one")
        result[key] = value
    return result


class Merge:
    """Reconciles one field at a time; collects the resolved values and the merged dict."""

    def __init__(self, explicit: Mapping[str, Any], settings: Mapping[str, Any], ds_json: Mapping[str, Any],
                 source: str, spelling: Mapping[str, str], flag_of: Callable[[str], str]):
        self.explicit = explicit
        self.settings = dict(settings)
        self.ds = copy.deepcopy(dict(ds_json))
        self.source = source
        self._spelling = spelling
        self._flag_of = flag_of
        self.resolved: Dict[str, Any] = {}
        self._json_origin: Dict[str, Tuple[str, Any]] = {}  # field -> (JSON key, raw value) it came from

    def flag(self, name: str) -> str:
        return self._spelling.get(name) or self._flag_of(name)

    def shown_flag(self, name: str) -> str:
        value = self.explicit[name]
        return self.flag(name) if isinstance(value, bool) else f"{self.flag(name)} {value}"

    def current(self, name: str) -> Any:
        return self.resolved.get(name, self.settings.get(name))

    def node(self, *keys: str, create: bool = False) -> Optional[Dict[str, Any]]:
        """The JSON object at keys (None when absent, unless create)."""
        node = self.ds
        for depth, key in enumerate(keys):
            child = node.get(key)
            if child is None and create:
                child = node[key] = {}
            if child is None:
                return None
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(keys[:depth + 1])} in {self.source} must be a JSON object, "
                                  f"got {json.dumps(child)}")
            node = child
        return node

    def reconcile(self, name: str, keys: Tuple[str, ...], *, from_json: Callable = None,
                  to_json: Callable = None, write: bool = True) -> Any:
        """Resolve field `name` against the JSON value at `keys`.

        Present in the JSON: that value wins, an explicit flag must agree, and so must any other JSON key
        already mapped to this field. Absent: the flag's value (explicit or default) is used and, if
        `write`, stored at `keys`.
        """
        *parents, key = keys
        where = ".".join(keys)
        node = self.node(*parents)
        if node is not None and key in node and node[key] != AUTO:
            raw = node[key]
            value = from_json(raw, where) if from_json else raw
            if name in self.explicit and not same(self.explicit[name], value):
                raise ConfigError(f"{self.shown_flag(name)} contradicts {where}={json.dumps(raw)} in "
                                  f"{self.source}; drop one")
            if name in self._json_origin and not same(self.resolved[name], value):
                other, other_raw = self._json_origin[name]
                raise ConfigError(f"{other}={json.dumps(other_raw)} and {where}={json.dumps(raw)} in "
                                  f"{self.source} disagree; make them equal")
            self._json_origin[name] = (where, raw)
        else:
            value = self.current(name)
            if write and value is not None:
                self.node(*parents, create=True)[key] = to_json(value) if to_json else value
        self.resolved[name] = value
        return value

    def refuse_flags(self, names, reason: str) -> None:
        """Explicit flags that would have no effect under the JSON are errors, never silently dropped."""
        for name in names:
            if name in self.explicit:
                raise ConfigError(f"{self.shown_flag(name)} has no effect {reason}; drop it")


def same(a: Any, b: Any) -> bool:
    """Equal as settings: 1e-4 typed on the command line equals 0.0001 in JSON; true never equals 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def as_int(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigError(f"{where} must be an integer, got {json.dumps(raw)}")
    return raw


def as_float(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ConfigError(f"{where} must be a number, got {json.dumps(raw)}")
    return float(raw)


def as_bool(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{where} must be true or false, got {json.dumps(raw)}")
    return raw


