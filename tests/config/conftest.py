"""Fixtures for the configuration tests: a tiny valid model and a DeepSpeed JSON writer."""

import json

import pytest

# The smallest flag set that resolves: everything else has a default.
TINY_FLAGS = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
              "--seq-length", "128", "--train-iters", "10", "--lr", "1e-4"]


@pytest.fixture
def tiny_flags():
    return list(TINY_FLAGS)


@pytest.fixture
def ds_json(tmp_path):
    """write(obj_or_text) -> path of `ds.json` in a temporary directory."""
    def write(content, name="ds.json"):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)
    return write
