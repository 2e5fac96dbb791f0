"""Faults: a save killed midway, truncated and missing shards, a checkpoint of another model or layout,
pruning, and exit signals that must make every rank save and stop together.
"""

import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.distributed import run_on_ranks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _resume_after_kill(save_dir, weights_file):
    from megatron.checkpointing import Checkpointer, load_checkpoint
    from megatron.training.loop import TrainState
    from tests.checkpointing.tiny_runs import build_tiny_engine, run_steps

    engine = build_tiny_engine(tp=1, zero=1, seed=777)
    resumed = load_checkpoint(engine, save_dir, log=lambda _: None)
    assert resumed.iteration == 2
    expected = torch.load(weights_file, weights_only=True)
    for name, param in engine.module.named_parameters():
        assert torch.equal(param.detach(), expected[name]), f"{name} differs from the step-2 weights"
    # Training goes on and the next save clears the killed save's leftovers.
    state = run_steps(engine, TrainState(iteration=2, consumed_train_samples=resumed.consumed_train_samples), 3)
    Checkpointer(engine, save_dir, log=lambda _: None).save(state)
    engine.destroy()


def test_killed_save_leaves_previous_checkpoint_loadable(tmp_path):
    save_dir = tmp_path / "checkpoints"
    result = subprocess.run([sys.executable, "-m", "tests.checkpointing.kill_during_save", str(save_dir)], cwd=REPO,
                            env={**os.environ, "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stdout[-3000:] + result.stderr[-3000:]
    assert (save_dir / "latest").read_text() == "global_step2"
    killed = save_dir / "global_step4.incomplete"
    assert killed.is_dir() and len(os.listdir(killed)) == 1, "the kill should land between two shard writes"
    assert not (save_dir / "global_step4").exists()

    run_on_ranks(1, _resume_after_kill, save_dir=str(save_dir), weights_file=str(tmp_path / "weights_step2.pt"))
    assert (save_dir / "latest").read_text() == "global_step3"
    assert not killed.exists()


def _save_tiny(save_dir, steps=1, ffn=None, zero=1):
    from megatron.checkpointing import Checkpointer
    from megatron.training.loop import TrainState
    from tests.checkpointing.tiny_runs import build_tiny_engine, run_steps

    kwargs = {"ffn": ffn} if ffn else {}
    engine = build_tiny_engine(tp=1, zero=zero, **kwargs)
    Checkpointer(engine, save_dir, log=lambda _: None).save(run_steps(engine, TrainState(), steps))
    engine.destroy()


def _load_error(load_dir, **kwargs):
    """Load into a fresh engine; return the error message (None if it loaded)."""
    from tests.checkpointing.tiny_runs import load_error_message

    return load_error_message(load_dir, **kwargs)


@pytest.fixture(scope="module")
def saved_once(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("saved_once")
    run_on_ranks(1, _save_tiny, save_dir=str(save_dir))
    return save_dir


def _copy(source, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(source, target)
    return target


def test_truncated_shard_is_named(saved_once, tmp_path):
    load_dir = _copy(saved_once, tmp_path)
    shard = load_dir / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    size = shard.stat().st_size
    with open(shard, "r+b") as handle:
        handle.truncate(size // 2)
    message = run_on_ranks(1, _load_error, load_dir=str(load_dir))[0]
    assert message and str(shard) in message and f"{size // 2} bytes" in message and str(size) in message


def test_missing_shard_is_named(saved_once, tmp_path):
    load_dir = _copy(saved_once, tmp_path)
    shard = load_dir / "global_step1" / "mp_rank_00_model_states.pt"
    shard.unlink()
    message = run_on_ranks(1, _load_error, load_dir=str(load_dir))[0]
    assert message and f"{shard} is missing" in message


def test_corrupt_shard_of_right_size_is_named(saved_once, tmp_path):
    load_dir = _copy(saved_once, tmp_path)
    shard = load_dir / "global_step1" / "mp_rank_00_model_states.pt"
    shard.write_bytes(b"\0" * shard.stat().st_size)
    message = run_on_ranks(1, _load_error, load_dir=str(load_dir))[0]
    # Same size, other content: the manifest's CRC-32 names it before anything is unpickled.
    assert message and str(shard) in message and "corrupted on disk or in a copy" in message


def test_other_architecture_names_keys_and_shapes(saved_once):
    message = run_on_ranks(1, _load_error, load_dir=str(saved_once), ffn=48)[0]
    assert message and "checkpoint_manifest.json" in message
    assert "layers.0.fc1.weight: checkpoint (32, 16) vs model (48, 16)" in message
    assert "layers.1.fc2.weight: checkpoint (16, 32) vs model (16, 48)" in message


def test_other_layout_asks_for_universal_checkpoint(saved_once):
    message = run_on_ranks(1, _load_error, load_dir=str(saved_once), zero=3)[0]
    assert message and "ZeRO-1" in message and "ZeRO-3" in message and "--universal-checkpoint" in message


def test_no_checkpoint_means_fresh_start(tmp_path):
    assert run_on_ranks(1, _load_error, load_dir=str(tmp_path))[0] is None


def _train_with_interval(save_dir):
    from megatron.checkpointing import Checkpointer
    from megatron.training.loop import TrainState
    from tests.checkpointing.tiny_runs import build_tiny_engine, run_steps

    engine = build_tiny_engine(tp=1, zero=0)
    checkpointer = Checkpointer(engine, save_dir, save_interval=2, keep_last=2, log=lambda _: None)
    state = run_steps(engine, TrainState(), 5, on_iteration_end=checkpointer)
    checkpointer.finish(state)
    engine.destroy()


def test_save_interval_and_keep_last(tmp_path):
    run_on_ranks(1, _train_with_interval, save_dir=str(tmp_path))
    folders = sorted(name for name in os.listdir(tmp_path) if (tmp_path / name).is_dir())
    assert folders == ["global_step4", "global_step5"]
    assert (tmp_path / "latest").read_text() == "global_step5"


def _signal_one_rank(save_dir, signal_number, signalled_rank):
    from megatron.checkpointing import Checkpointer
    from megatron.core import comm
    from megatron.training.loop import TrainState
    from tests.checkpointing.tiny_runs import build_tiny_engine, run_steps

    engine = build_tiny_engine(tp=1, zero=1)
    handler_before = signal.getsignal(signal_number)
    with Checkpointer(engine, save_dir, save_interval=100, log=lambda _: None) as checkpointer:
        def hook(state):
            if state.iteration == 2 and comm.get_rank() == signalled_rank:
                os.kill(os.getpid(), signal_number)  # as the scheduler would, to one process only
            return checkpointer(state)

        state = run_steps(engine, TrainState(), 5, on_iteration_end=hook)
    assert signal.getsignal(signal_number) == handler_before, "the previous handler must be restored"
    engine.destroy()
    return state.iteration


@pytest.mark.parametrize("signal_number,signalled_rank", [(signal.SIGTERM, 1), (signal.SIGINT, 0)],
                         ids=["SIGTERM-rank1", "SIGINT-rank0"])
def test_exit_signal_saves_on_every_rank_and_stops(tmp_path, signal_number, signalled_rank):
    iterations = run_on_ranks(2, _signal_one_rank, save_dir=str(tmp_path), signal_number=signal_number,
                              signalled_rank=signalled_rank)
    assert iterations == [2, 2]
    assert (tmp_path / "latest").read_text() == "global_step2"
    assert sorted(os.listdir(tmp_path / "global_step2" / "rng_state")) == ["rank_00000.pt", "rank_00001.pt"]
