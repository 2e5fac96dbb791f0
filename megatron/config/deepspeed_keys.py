"""Top-level keys of a DeepSpeed JSON: typos refused with the closest name, legacy blocks handled.

DeepSpeed ignores a top-level key it does not know: `"zero_optimisation": {"stage": 3}` silently trains with
ZeRO-0. The known keys are taken from the installed DeepSpeed itself, not typed by hand: every key its
`DeepSpeedConfig` reads while parsing a config, plus the string constants of its config modules (the
optimizer, scheduler, activation checkpointing, profiler... blocks are parsed elsewhere).

Megatron-DeepSpeed's JSONs carry blocks DeepSpeed 0.19 no longer acts on at `deepspeed.initialize` for a
model it did not build: `curriculum_learning` (it fails inside initialize), `compression_training` and
`data_efficiency` (ignored). A disabled block is dropped with a note; an enabled one is refused here.
"""

import difflib
import functools
import importlib
from typing import Any, Dict, FrozenSet, List, Mapping, Tuple

from megatron.config.errors import ConfigError

_CONSTANT_MODULES = (
    "deepspeed.runtime.constants", "deepspeed.runtime.activation_checkpointing.config",
    "deepspeed.profiling.constants", "deepspeed.autotuning.constants", "deepspeed.checkpoint.constants",
    "deepspeed.runtime.data_pipeline.constants", "deepspeed.runtime.swap_tensor.constants",
    "deepspeed.comm.constants",
)

LEGACY_BLOCKS = {
    "curriculum_learning": "DeepSpeed's legacy curriculum learning (sequence-length warm-up) needs "
                           "Megatron-DeepSpeed's data pipeline, which is not here; remove the block or set "
                           "\"enabled\": false, and warm up with --lr-warmup-* instead",
    "data_efficiency": "DeepSpeed data efficiency (curriculum data sampling, random-LTD) needs "
                       "Megatron-DeepSpeed's data pipeline, which is not here; remove the block or set "
                       "\"enabled\": false",
    "compression_training": "DeepSpeed Compression (quantization / pruning during training) is not wired into "
                            "this model; remove the block (compress the trained model offline with "
                            "deepspeed.compression) or disable every technique in it",
}


@functools.lru_cache(maxsize=1)
def known_top_level_keys() -> FrozenSet[str]:
    """Every top-level key the installed DeepSpeed may read (a superset: constants include nested names)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    seen = set()

    class Recording(dict):
        # DeepSpeedConfig reads the dict through these; each name it asks for is a key it knows.
        def __getitem__(self, key):
            seen.add(key)
            return dict.__getitem__(self, key)

        def get(self, key, default=None):
            seen.add(key)
            return dict.get(self, key, default)

        def __contains__(self, key):
            seen.add(key)
            return dict.__contains__(self, key)

    try:
        DeepSpeedConfig(Recording(train_batch_size=1, train_micro_batch_size_per_gpu=1))
    except Exception:  # noqa: BLE001 - the keys read before a failure still count; constants cover the rest
        pass
    for name in _CONSTANT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        seen.update(value for key, value in vars(module).items() if key.isupper() and isinstance(value, str))
    return frozenset(key for key in seen if isinstance(key, str))


def _enabled(block: Any) -> bool:
    """True if the block, or any block inside it, says "enabled": true."""
    if isinstance(block, dict):
        return block.get("enabled") is True or any(_enabled(value) for value in block.values())
    if isinstance(block, list):
        return any(_enabled(value) for value in block)
    return False


def check_top_level_keys(ds_json: Mapping[str, Any], source: str) -> Tuple[Dict[str, Any], List[str]]:
    """(the JSON without disabled legacy blocks, notes). Raises ConfigError for an unknown key or an enabled
    legacy block."""
    notes: List[str] = []
    cleaned = dict(ds_json)
    for key, reason in LEGACY_BLOCKS.items():
        if key not in cleaned:
            continue
        if _enabled(cleaned[key]):
            raise ConfigError(f"{key} in {source} is enabled: {reason}")
        del cleaned[key]
        notes.append(f"{key} in {source} is disabled; dropped (DeepSpeed 0.19 does not accept it for this model)")
    known = known_top_level_keys()
    for key in cleaned:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "see DeepSpeed's configuration documentation"
        raise ConfigError(f"{source}: unknown top-level key {key!r} (DeepSpeed would silently ignore it); {hint}")
    return cleaned, notes
