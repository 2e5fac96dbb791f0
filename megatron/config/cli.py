"""The command line, generated from the configuration dataclasses.

Every option defaults to argparse.SUPPRESS, so the parsed namespace holds only what the user typed:
that is how an explicit `--micro-batch-size 4` is told apart from the default when it meets the
DeepSpeed JSON. Alternative spellings of one field get their own dest, so `--swiglu --no-swiglu` or
`--num-key-value-heads 2 --num-query-groups 4` is an error instead of "last one wins".
"""

import argparse
import difflib
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from megatron.config.errors import ConfigError
from megatron.config.fields import (ALIASES, CHOICES, CLI, CONST_ALIASES, HELP, canonical_choice,
                                    describe_default, field_map, flag_of)
from megatron.config.run_config import GROUPS

# Switches that carry no setting of their own but appear in Megatron-DeepSpeed launch scripts.
# Each is accepted only where its meaning holds here; none is silently ignored.
COMPAT_SWITCHES: Dict[str, str] = {
    "--deepspeed": "Megatron-DeepSpeed's switch to use DeepSpeed; engines here are always DeepSpeed's, "
                   "so it changes nothing.",
    "--deepspeed-activation-checkpointing": "Megatron-DeepSpeed's switch to recompute with "
                                            "deepspeed.checkpointing; that is the only implementation "
                                            "here, so it changes nothing (use --recompute-granularity).",
    "--no-pipeline-parallel": "Megatron-DeepSpeed's 'no PipelineModule'; here that is what "
                              "--pipeline-model-parallel-size 1 means, so it is an error with PP > 1.",
    "--group-query-attention": "Megatron-LM's grouped-query attention switch; requires "
                               "--num-query-groups (or --num-key-value-heads).",
}
DEEPSPEED_CONFIG_FLAGS = ("--deepspeed_config", "--deepspeed-config")
_SWITCH_DEST = "switch"
_ALIAS_SEPARATOR = "|"


@dataclass(frozen=True)
class CommandLine:
    """What the user typed, and nothing else."""

    values: Dict[str, Any]          # field name -> value, for every field set on the command line
    spelling: Dict[str, str]        # field name -> the flag that set it, for error messages
    switches: FrozenSet[str]        # COMPAT_SWITCHES given
    deepspeed_config_path: Optional[str]


class _RaisingParser(argparse.ArgumentParser):
    """argparse exits the process on a bad flag; a library raises, and the entry script decides."""

    def error(self, message):
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            unknown = [token for token in message[len(prefix):].split() if token.startswith("-")]
            hints = []
            for token in unknown:
                close = difflib.get_close_matches(token.split("=")[0], list(self._option_string_actions), n=1)
                hints.append(f"{token} (did you mean {close[0]}?)" if close else token)
            if unknown:
                message = (f"unknown flag{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: neither a flag "
                           f"of this project nor a Megatron-DeepSpeed / Megatron-LM flag it knows")
        raise ConfigError(f"{message} (see --help, or docs/configuration.md, for the flags)")


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The full parser: one argument group per configuration dataclass."""
    parser = _RaisingParser(prog=prog, allow_abbrev=False, description=(
        "megatron-ds: Megatron-style flags merged with a DeepSpeed JSON into one resolved configuration."))
    deepspeed = parser.add_argument_group("DeepSpeed")
    deepspeed.add_argument(*DEEPSPEED_CONFIG_FLAGS, dest="deepspeed_config_path", default=argparse.SUPPRESS,
                           metavar="PATH", help="DeepSpeed JSON; it owns batch, ZeRO, precision, clipping, "
                           "optimizer and scheduler settings, and flags may only agree with it.")
    for switch, text in COMPAT_SWITCHES.items():
        deepspeed.add_argument(switch, dest=_SWITCH_DEST + _ALIAS_SEPARATOR + switch, action="store_true",
                               default=argparse.SUPPRESS, help=text)
    for name, cls in GROUPS:
        group = parser.add_argument_group(name, (cls.__doc__ or "").strip().splitlines()[0])
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.metadata.get(CLI, True):
                _add_field(group, field, hints[field.name])
    return parser


def _add_field(group, field: dataclasses.Field, annotation) -> None:
    base, is_sequence = _base_type(annotation)
    help_text = f"{field.metadata[HELP]} Default: {describe_default(field)}.".replace("%", "%%")
    if base is bool:
        group.add_argument(flag_of(field), dest=field.name, action="store_true", default=argparse.SUPPRESS,
                           help=help_text)
        for alias in field.metadata[ALIASES]:
            group.add_argument(alias, dest=_alias_dest(field.name, alias), action="store_true",
                               default=argparse.SUPPRESS, help=f"Same as {flag_of(field)}.")
    else:
        choices = field.metadata[CHOICES]
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else field.name.upper()
        kwargs = dict(type=_converter(base, choices), default=argparse.SUPPRESS, metavar=metavar)
        if is_sequence:
            kwargs["nargs"] = "+"
        group.add_argument(flag_of(field), dest=field.name, help=help_text, **kwargs)
        for alias in field.metadata[ALIASES]:
            group.add_argument(alias, dest=_alias_dest(field.name, alias), help=f"Same as {flag_of(field)}.",
                               **kwargs)
    for switch, value in field.metadata[CONST_ALIASES].items():
        group.add_argument(switch, dest=_alias_dest(field.name, switch), action="store_const", const=value,
                           default=argparse.SUPPRESS, help=f"Same as {flag_of(field)} {value}.")


def _alias_dest(name: str, flag: str) -> str:
    return name + _ALIAS_SEPARATOR + flag


def _base_type(annotation) -> Tuple[type, bool]:
    """(element type, is a sequence) for int, Optional[int], Tuple[str, ...] and the like."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union:
        return _base_type(args[0])
    if typing.get_origin(annotation) in (tuple, list):
        return args[0], True
    return annotation, False


def _converter(base: type, choices: Optional[Sequence[Any]]):
    def convert(text: str):
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}, got {text!r}") from None
        if choices is None:
            return value
        match = canonical_choice(value, choices)
        if match is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(map(str, choices))}")
        return match
    convert.__name__ = base.__name__  # argparse names the type in its own messages
    return convert


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    """Parse argv into the explicitly given values; contradicting spellings are an error."""
    namespace = build_parser().parse_args(list(argv))
    switch_like = _const_alias_flags()
    given: Dict[str, List[Tuple[str, Any]]] = {}
    switches = set()
    path = None
    for dest, value in vars(namespace).items():
        if dest == "deepspeed_config_path":
            path = value
            continue
        name, _, alias = dest.partition(_ALIAS_SEPARATOR)
        if name == _SWITCH_DEST:
            switches.add(alias)
            continue
        given.setdefault(name, []).append((alias or _canonical_flag(name), value))
    values, spelling = {}, {}
    for name, settings in given.items():
        (first_flag, first_value), *rest = settings
        for flag, value in rest:
            if value != first_value:
                raise ConfigError(f"{_show(first_flag, first_value, switch_like)} contradicts "
                                  f"{_show(flag, value, switch_like)}; drop one")
        values[name] = tuple(first_value) if isinstance(first_value, list) else first_value
        spelling[name] = first_flag
    _check_switches(switches, values)
    return CommandLine(values, spelling, frozenset(switches), path)


def _canonical_flag(name: str) -> str:
    return flag_of(field_map(cls for _, cls in GROUPS)[name][1])


def _const_alias_flags() -> FrozenSet[str]:
    return frozenset(flag for _, cls in GROUPS for field in dataclasses.fields(cls)
                     for flag in field.metadata[CONST_ALIASES])


def _show(flag: str, value: Any, switch_like: FrozenSet[str]) -> str:
    """How a setting looks on the command line: switches alone, options with their value."""
    return flag if isinstance(value, bool) or flag in switch_like else f"{flag} {value}"


def _check_switches(switches: set, values: Dict[str, Any]) -> None:
    pipeline = values.get("pipeline_model_parallel_size", 1)
    if "--no-pipeline-parallel" in switches and pipeline != 1:
        raise ConfigError(f"--no-pipeline-parallel contradicts --pipeline-model-parallel-size {pipeline}; "
                          f"drop one")
    if "--group-query-attention" in switches and "num_key_value_heads" not in values:
        raise ConfigError("--group-query-attention needs the number of groups: add --num-query-groups N "
                          "(or --num-key-value-heads N)")
