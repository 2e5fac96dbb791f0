"""The generated Markdown reference covers every field and is committed up to date."""

import dataclasses
import pathlib
import subprocess
import sys

from megatron.config.docs import generate
from megatron.config.fields import all_flags_of
from megatron.config.run_config import GROUPS

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_reference_mentions_every_field_and_spelling():
    text = generate()
    for _, cls in GROUPS:
        assert f"`{cls.__name__}`" in text
        for field in dataclasses.fields(cls):
            assert f"| `{field.name}` |" in text, field.name
            for flag in all_flags_of(field):
                assert f"`{flag}`" in text, flag


def test_committed_reference_is_up_to_date():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == generate(), "regenerate: python -m megatron.config.docs > docs/configuration.md"


def test_module_entry_point_prints_the_reference():
    result = subprocess.run([sys.executable, "-m", "megatron.config.docs"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout == generate()
