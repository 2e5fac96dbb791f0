"""No checkpoint load runs code from a file: a crafted pickle is refused, naming the file, and never executes.

The malicious payload would create a marker file when unpickled (``exec`` through ``__reduce__``). It is placed
where DeepSpeed's engine loader reads (a model-states shard) and where DeepSpeed's universal loader reads
(``zero/<param>/fp32.pt``, loaded by DeepSpeed with ``torch.load(weights_only=False)``): both are refused.
"""

import json
import os
import shutil

import pytest
import torch

from tests.distributed import run_on_ranks


class _WritesAFile:
    """Unpickling this object runs exec(); a weights-only loader must never get that far."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _plant(path, marker):
    torch.save({"module": _WritesAFile(marker)}, path)


def _refresh_manifest_sizes(folder):
    """An attacker controls the whole folder, manifest included: make the size and checksum checks pass (the
    CRC-32 finds corruption, not tampering; the weights-only loader is what stops the code)."""
    from megatron.checkpointing.manifest import checksum_file

    manifest_path = os.path.join(folder, "checkpoint_manifest.json")
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    manifest["files"] = {name: os.path.getsize(os.path.join(folder, name)) for name in manifest["files"]}
    manifest["checksums"] = {name: checksum_file(os.path.join(folder, name)) for name in manifest["files"]}
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)


def test_safe_torch_load_refuses_code(tmp_path):
    from megatron.checkpointing import UnsafeCheckpointError, safe_torch_load

    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    _plant(evil, str(marker))
    with pytest.raises(UnsafeCheckpointError, match=str(evil)) as raised:
        safe_torch_load(str(evil))
    assert "it needs `exec`" in str(raised.value)
    assert not marker.exists()


def test_patched_torch_load_refuses_code_whatever_weights_only_says(tmp_path):
    from megatron.checkpointing import UnsafeCheckpointError
    from megatron.checkpointing.safe_load import weights_only_torch_load

    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    _plant(evil, str(marker))
    with weights_only_torch_load(), pytest.raises(UnsafeCheckpointError, match=str(evil)):
        torch.load(str(evil), weights_only=False)  # what DeepSpeed's universal loader passes
    assert not marker.exists()
    assert torch.load.__module__.startswith("torch"), "the original torch.load must be back"


def _save(save_dir):
    from megatron.checkpointing import Checkpointer
    from megatron.training.loop import TrainState
    from tests.checkpointing.tiny_runs import build_tiny_engine, run_steps

    engine = build_tiny_engine(tp=1, zero=1)
    Checkpointer(engine, save_dir, log=lambda _: None).save(run_steps(engine, TrainState(), 1))
    engine.destroy()


def _load_message(load_dir, universal):
    from megatron.checkpointing import UnsafeCheckpointError
    from tests.checkpointing.tiny_runs import load_error_message

    return load_error_message(load_dir, error_type=UnsafeCheckpointError, universal=universal)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("saved")
    run_on_ranks(1, _save, save_dir=str(save_dir))
    return save_dir


def test_engine_load_refuses_malicious_shard(saved, tmp_path):
    load_dir, marker = tmp_path / "ckpt", tmp_path / "marker"
    shutil.copytree(saved, load_dir)
    shard = load_dir / "global_step1" / "mp_rank_00_model_states.pt"
    _plant(shard, str(marker))
    _refresh_manifest_sizes(load_dir / "global_step1")
    message = run_on_ranks(1, _load_message, load_dir=str(load_dir), universal=False)[0]
    assert message and str(shard) in message and "Nothing from it was executed" in message
    assert not marker.exists()


def test_universal_load_refuses_malicious_tensor_file(saved, tmp_path):
    from megatron.checkpointing.universal import convert_to_universal

    load_dir, marker = tmp_path / "ckpt", tmp_path / "marker"
    shutil.copytree(saved, load_dir)
    convert_to_universal(str(load_dir / "global_step1"), str(load_dir / "global_step1.universal"),
                         log=lambda _: None)
    planted = load_dir / "global_step1.universal" / "zero" / "final_norm.weight" / "fp32.pt"
    _plant(planted, str(marker))
    message = run_on_ranks(1, _load_message, load_dir=str(load_dir), universal=True)[0]
    assert message and str(planted) in message
    assert not marker.exists()
