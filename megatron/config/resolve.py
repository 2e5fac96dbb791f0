"""parse_config / resolve_config: flags + DeepSpeed JSON -> one validated RunConfig, built once.

Order: explicit values -> model-family preset under them -> defaults under both -> DeepSpeed JSON merged
in (deepspeed_json.py) -> group dataclasses derive what is left -> validate().
"""

import dataclasses
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from megatron.config.cli import parse_command_line
from megatron.config.deepspeed_json import load_deepspeed_json
from megatron.config.deepspeed_keys import check_top_level_keys
from megatron.config.legacy_flags import translate_legacy_flags
from megatron.config.migration import apply_megatron_deepspeed_defaults
from megatron.config.run_length import resolve_run_length
from megatron.config.deepspeed_merge import merge_deepspeed_json
from megatron.config.errors import ConfigError
from megatron.config.fields import CLI, field_map, flag_of
from megatron.config.model import FAMILY_PRESETS
from megatron.config.run_config import GROUPS, RunConfig
from megatron.config.validate import validate
from megatron.core.launch_env import world_size_variable

# name -> dataclass field over all groups (field_map asserts the names are unique: each is also a flag).
_FIELDS = {name: field for name, (_, field) in field_map(cls for _, cls in GROUPS).items()}


def parse_config(argv: Optional[Sequence[str]] = None, world_size: Optional[int] = None) -> RunConfig:
    """Parse Megatron-style flags (sys.argv[1:] by default) and the --deepspeed_config JSON they name.

    world_size: the number of ranks; defaults to $WORLD_SIZE, else 1. Raises ConfigError (a ValueError)
    for anything the user can get wrong, before any engine or process group exists.
    """
    # Megatron-DeepSpeed / Megatron-LM flags without a field here are rewritten, noted or refused first.
    argv, notes = translate_legacy_flags(sys.argv[1:] if argv is None else argv)
    command_line = parse_command_line(argv)
    return _resolve(dict(command_line.values), command_line.spelling, command_line.deepspeed_config_path,
                    world_size, notes)


def resolve_config(values: Optional[Mapping[str, Any]] = None, *,
                   deepspeed_config: Union[None, str, Mapping[str, Any]] = None,
                   world_size: Optional[int] = None) -> RunConfig:
    """The same resolution from Python values (field name -> value, as if typed as flags), e.g. in tests:
    resolve_config({"num_layers": 2, "hidden_size": 64, ...}, deepspeed_config="ds.json", world_size=2).
    deepspeed_config may be a JSON path or an already-parsed dict."""
    values = dict(values or {})
    unknown = sorted(name for name in values if name not in _FIELDS or not _FIELDS[name].metadata.get(CLI, True))
    if unknown:
        raise ConfigError(f"unknown or derived configuration fields {unknown}; see docs/configuration.md")
    for name, value in values.items():  # as the command line gives them (data paths, --rampup-batch-size)
        if isinstance(value, list):
            values[name] = tuple(value)
    return _resolve(values, {}, deepspeed_config, world_size, [])


def _resolve(explicit: Dict[str, Any], spelling: Mapping[str, str],
             deepspeed_config: Union[None, str, Mapping[str, Any]], world_size: Optional[int],
             notes: List[str]) -> RunConfig:
    notes = list(notes) + apply_megatron_deepspeed_defaults(explicit)
    if isinstance(deepspeed_config, str):
        ds_json, path, source = load_deepspeed_json(deepspeed_config), deepspeed_config, deepspeed_config
    else:
        ds_json, path, source = dict(deepspeed_config or {}), None, "the DeepSpeed config"
    ds_json, json_notes = check_top_level_keys(ds_json, source)
    notes += json_notes
    if "lr_warmup_fraction" in explicit and "lr_warmup_iters" in explicit:
        raise ConfigError(f"--lr-warmup-fraction {explicit['lr_warmup_fraction']} and --lr-warmup-iters "
                          f"{explicit['lr_warmup_iters']} both set the warmup; drop one")

    settings = {name: field.default for name, field in _FIELDS.items()}
    settings.update(FAMILY_PRESETS[explicit.get("model_family", settings["model_family"])])
    settings.update(explicit)
    settings["world_size"] = _world_size(world_size)
    if "local_rank" not in explicit:
        settings["local_rank"] = _env_int("LOCAL_RANK", 0)

    tp, pp = settings["tensor_model_parallel_size"], settings["pipeline_model_parallel_size"]
    # Context-parallel ranks (ring or Ulysses; validate() refuses both at once) share the model replica.
    cp = max(settings["context_parallel_size"], settings["ds_sequence_parallel_size"], 1)
    if tp < 1 or pp < 1 or settings["world_size"] % (tp * pp * cp):
        what = f"tensor-parallel {tp} x pipeline-parallel {pp}" + (f" x context-parallel {cp}" if cp > 1 else "")
        raise ConfigError(f"world size {settings['world_size']} is not divisible by {what} = {tp * pp * cp}; "
                          f"change --tensor-model-parallel-size / --pipeline-model-parallel-size"
                          + (" / --context-parallel-size / --ds-sequence-parallel-size" if cp > 1 else "")
                          + " or the number of ranks")
    merged, ds_dict = merge_deepspeed_json(explicit, settings, ds_json, settings["world_size"] // (tp * pp * cp),
                                           source=source, spelling=spelling,
                                           flag_of=lambda name: flag_of(_FIELDS[name]), notes=notes)
    settings.update(merged)
    settings["data_parallel_size"] = settings["world_size"] // (tp * pp * cp)
    resolve_run_length(settings, explicit, notes)

    groups = {name: cls(**{f.name: settings[f.name] for f in dataclasses.fields(cls)}) for name, cls in GROUPS}
    # padded_vocab_size stays unset: the tokenizer, built later by the data code, reports the real
    # vocabulary through RunConfig.with_vocab() (NullTokenizer adds EOD to --vocab-size, for one).
    config = RunConfig(**groups, deepspeed_config=ds_dict, deepspeed_config_path=path, notes=tuple(notes))
    validate(config)
    return config


def _world_size(argument: Optional[int]) -> int:
    # mpirun and srun give their own size variable; WORLD_SIZE is only set once the world is joined
    world = argument if argument is not None else _env_int(world_size_variable(os.environ), 1)
    if world < 1:
        raise ConfigError(f"world size {world} must be >= 1")
    return world


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None
