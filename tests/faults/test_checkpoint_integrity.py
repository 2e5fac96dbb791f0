"""Checkpoint integrity: content checksums, the save-folder lock, the writable check, a full disk, and no
DeepSpeed script that unpickles with code execution left in a save folder."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.distributed import run_on_ranks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _save_tiny(save_dir, iterations=(1,)):
    from megatron.checkpointing import Checkpointer
    from megatron.training.loop import TrainState
    from tests.checkpointing.tiny_runs import build_tiny_engine, run_steps

    engine = build_tiny_engine(tp=1, zero=1)
    checkpointer, state, errors = Checkpointer(engine, save_dir, log=lambda _: None), TrainState(), []
    for iteration in iterations:
        state = run_steps(engine, state, iteration)
        try:
            checkpointer.save(state)
        except Exception as error:  # noqa: BLE001 - the test reads it
            errors.append(f"{type(error).__name__}: {error}")
    engine.destroy()
    return errors


def _load_error(load_dir):
    from tests.checkpointing.tiny_runs import load_error_message

    return load_error_message(load_dir)


@pytest.fixture(scope="module")
def saved_once(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("integrity")
    assert run_on_ranks(1, _save_tiny, save_dir=str(save_dir))[0] == []
    return save_dir


def test_a_flipped_bit_is_found_by_the_checksum(saved_once, tmp_path):
    load_dir = tmp_path / "copy"
    shutil.copytree(saved_once, load_dir)
    shard = load_dir / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit, same size: only the content checksum can see it
    shard.write_bytes(bytes(data))
    message = run_on_ranks(1, _load_error, load_dir=str(load_dir))[0]
    assert message and str(shard) in message and "not the recorded content" in message and "crc32:" in message
    assert run_on_ranks(1, _load_error, load_dir=str(saved_once))[0] is None  # the intact original loads


def test_no_code_executing_recovery_script_is_left(saved_once):
    folder = saved_once
    assert not (folder / "zero_to_torch.py").exists()
    script = (folder / "zero_to_fp32.py").read_text()
    assert "megatron.checkpointing.consolidate" in script and "torch.load" not in script
    output = saved_once / "weights.safetensors"
    result = subprocess.run([sys.executable, str(folder / "zero_to_fp32.py"), str(output)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    from safetensors.torch import load_file

    weights = load_file(str(output))
    assert len(weights) > 3 and all(tensor.dtype.is_floating_point for tensor in weights.values()), sorted(weights)


def _claim_twice(save_dir):
    from megatron.checkpointing.save_folder import SaveFolder, SaveFolderError

    first = SaveFolder(save_dir).claim()
    try:
        SaveFolder(save_dir).claim()
    except SaveFolderError as error:
        message = str(error)
    else:
        message = None
    first.release()
    SaveFolder(save_dir).claim().release()  # free again once released
    return message, os.getpid()


def test_a_second_run_on_the_same_save_folder_is_refused(tmp_path):
    import socket

    message, pid = run_on_ranks(1, _claim_twice, save_dir=str(tmp_path / "shared"))[0]
    assert message and "in use by another run" in message and f"pid {pid}" in message
    assert socket.gethostname() in message


def _claim(save_dir):
    from megatron.checkpointing.save_folder import SaveFolder, SaveFolderError

    try:
        SaveFolder(save_dir).claim().release()
    except SaveFolderError as error:
        return str(error)
    return None


def test_an_unwritable_save_folder_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    message = run_on_ranks(1, _claim, save_dir=str(blocker / "checkpoints"))[0]
    assert message and "is not writable" in message and "before training" in message


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs for the disk-full case")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


def test_disk_full_is_reported_and_the_previous_checkpoint_survives(tmp_path):
    mount = str(tmp_path / "small_disk")
    _mount_tmpfs(mount, "160k")  # one tiny checkpoint (~70 kB) fits, two do not
    try:
        errors = run_on_ranks(1, _save_tiny, save_dir=mount, iterations=(1, 2, 3))[0]
        assert errors and "disk full" in errors[0] and "global_step1" in errors[0] and "intact" in errors[0], errors
        assert open(os.path.join(mount, "latest")).read() == "global_step1"
        assert not [name for name in os.listdir(mount) if "incomplete" in name]
        assert run_on_ranks(1, _load_error, load_dir=mount)[0] is None
    finally:
        subprocess.run(["umount", mount], check=False)
