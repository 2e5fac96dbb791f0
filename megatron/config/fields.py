"""`option()`: a dataclass field that also describes its command-line flag and its documentation.

Every configuration field is declared once, with `option(...)`; the argparse parser (cli.py) and the
Markdown reference (docs.py) are generated from this metadata, so the three can never disagree.
"""

import dataclasses
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

# Metadata keys. Kept as constants so a typo is a NameError, not a silently ignored key.
HELP = "help"
FLAG = "flag"                   # the canonical spelling, when it is not `--` + name with `_` -> `-`
ALIASES = "aliases"             # other spellings taking the same value (e.g. Megatron-DeepSpeed's)
CONST_ALIASES = "const_aliases" # {flag: value}: switches that set the field to a fixed value
CHOICES = "choices"
MINIMUM = "minimum"             # smallest allowed value, checked by validate()
REQUIRED = "required"           # None is not allowed once the config is resolved
DERIVED = "derived"             # how the default is computed when the field is left unset
CLI = "cli"                     # False: no flag (derived or filled by the resolver)


def option(default: Any, help: str, *, flag: Optional[str] = None, aliases: Sequence[str] = (),
           const_aliases: Optional[Mapping[str, Any]] = None, choices: Optional[Sequence[Any]] = None,
           minimum: Optional[float] = None, required: bool = False, derived: Optional[str] = None,
           cli: bool = True) -> Any:
    """Declare a configuration field; see the metadata keys above for the meaning of each argument."""
    metadata = {
        HELP: help,
        FLAG: flag,
        ALIASES: tuple(aliases),
        CONST_ALIASES: dict(const_aliases or {}),
        CHOICES: tuple(choices) if choices is not None else None,
        MINIMUM: minimum,
        REQUIRED: required,
        DERIVED: derived,
        CLI: cli,
    }
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field) -> str:
    """The canonical command-line spelling of a field: Megatron's `--num-layers` for `num_layers`."""
    return field.metadata.get(FLAG) or "--" + field.name.replace("_", "-")


def all_flags_of(field: dataclasses.Field) -> Tuple[str, ...]:
    """Every spelling that sets this field, canonical first."""
    if not field.metadata.get(CLI, True):
        return ()
    return (flag_of(field),) + field.metadata[ALIASES] + tuple(field.metadata[CONST_ALIASES])


def canonical_choice(value: str, choices: Sequence[str]) -> Optional[str]:
    """Match `value` against `choices` ignoring case (Megatron-DeepSpeed spells `rmsnorm`, Megatron-LM
    `RMSNorm`); None when nothing matches."""
    for choice in choices:
        if choice is not None and str(choice).lower() == str(value).lower():
            return choice
    return None


def describe_default(field: dataclasses.Field) -> str:
    """Human-readable default for --help and the reference: the derivation rule when there is one."""
    derived = field.metadata.get(DERIVED)
    if derived:
        return derived
    value = field.default
    if field.metadata.get(REQUIRED):
        return "required"
    return "unset" if value is None else repr(value) if isinstance(value, str) else str(value)


def field_map(classes: Iterable[type]) -> Dict[str, Tuple[type, dataclasses.Field]]:
    """name -> (owning class, field) over several groups; names are unique across groups because each
    one is also a flag name."""
    result: Dict[str, Tuple[type, dataclasses.Field]] = {}
    for cls in classes:
        for field in dataclasses.fields(cls):
            assert field.name not in result, f"field {field.name} declared twice"
            result[field.name] = (cls, field)
    return result
