"""Faults under the real `deepspeed` launcher (2 ranks, default --num-workers 2): exit signals, the launcher's
death, a stopped rank, and DeepSpeed's shared-memory buffers.

Every run uses its own --master_port, so the /dev/shm names it could leave (which embed the port) are only
ever this test's.
"""

import glob
import os
import random
import re
import signal
import subprocess
import time

import psutil

from tests.training.corpus import VOCAB

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flags(corpus, save, *extra):
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--max-position-embeddings", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
            "--train-iters", "100000", "--lr", "1e-3", "--log-interval", "1", "--eval-interval", "100000",
            "--eval-iters", "0", "--data-path", corpus["prefix"], "--data-cache-path", corpus["cache"],
            "--split", "98,2,0", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
            "--output-dir", os.path.join(save, "out"), "--save", save, "--save-interval", "1000",
            "--deepspeed_config", os.path.join(REPO, "deepspeed_configs", "zero1.json"), *extra]


class Job:
    """`deepspeed --num_gpus 2 pretrain_gpt_ds.py ...` in its own session (process group), output in a file."""

    def __init__(self, tmp_path, corpus, *extra):
        self.port = random.randint(20000, 40000)
        self.save = str(tmp_path / "checkpoints")
        self.log_path = str(tmp_path / "job.log")
        env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
        command = ["deepspeed", "--num_gpus", "2", "--master_port", str(self.port), "pretrain_gpt_ds.py",
                   *_flags(corpus, self.save, *extra)]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.group = self.process.pid

    def output(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def wait_for(self, pattern: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.output()):
                return self.output()
            assert self.process.poll() is None or re.search(pattern, self.output()), self.output()[-4000:]
            time.sleep(0.5)
        self.kill()
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output()[-4000:]}")

    def rank_pid(self, rank: int) -> int:
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if "pretrain_gpt_ds.py" in " ".join(child.cmdline()) and child.environ().get("RANK") == str(rank):
                    return child.pid
            except psutil.Error:
                continue
        raise AssertionError(f"rank {rank} not found")

    def wait_group_gone(self, timeout: float) -> float:
        """Seconds until no process of the job's session is left (fails after ``timeout``)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            self.process.poll()
            try:
                os.killpg(self.group, 0)
            except ProcessLookupError:
                return time.monotonic() - start
            time.sleep(0.5)
        self.kill()
        raise AssertionError(f"job still running after {timeout} s:\n{self.output()[-4000:]}")

    def kill(self):
        try:
            os.killpg(self.group, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def shm_files(self):
        return glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{self.port}_*")

    def latest(self):
        path = os.path.join(self.save, "latest")
        return open(path).read() if os.path.exists(path) else None


def _stopped_iteration(output: str) -> int:
    found = re.findall(r"stopped by signal SIGTERM at iteration (\d+) after saving; exit code 75", output)
    assert len(found) == 2, output[-4000:]  # both ranks
    assert len(set(found)) == 1
    return int(found[0])


def test_sigterm_to_one_rank_saves_and_exits_75(checkpoint_corpus, tmp_path):
    job = Job(tmp_path, checkpoint_corpus)
    try:
        job.wait_for(r"iteration +2 \|")
        assert not job.shm_files(), "DeepSpeed's shm buffers must be unlinked once every rank mapped them"
        os.kill(job.rank_pid(1), signal.SIGTERM)
        assert job.process.wait(timeout=120) == 75, job.output()[-4000:]
        job.wait_group_gone(30)
        output = job.output()
        assert job.latest() == f"global_step{_stopped_iteration(output)}"
        assert "killed by signal" not in output
        assert not job.shm_files()
    finally:
        job.kill()


def test_sigterm_to_the_process_group_saves_with_dataloader_workers(checkpoint_corpus, tmp_path):
    """What Ctrl-C or a scheduler does: every process of the job, DataLoader workers included, gets it."""
    job = Job(tmp_path, checkpoint_corpus)
    try:
        job.wait_for(r"iteration +2 \|")
        workers = [child for child in psutil.Process(job.rank_pid(0)).children() if child.is_running()]
        assert len(workers) >= 2, "expected the default --num-workers 2 DataLoader workers"
        os.killpg(job.group, signal.SIGTERM)
        job.wait_group_gone(90)
        output = job.output()
        assert job.process.returncode != 0
        assert job.latest() == f"global_step{_stopped_iteration(output)}"
        assert "DataLoader worker" not in output, output[-4000:]
        assert not job.shm_files()
    finally:
        job.kill()


def test_ranks_save_and_stop_when_the_launcher_dies(checkpoint_corpus, tmp_path):
    job = Job(tmp_path, checkpoint_corpus)
    try:
        job.wait_for(r"iteration +2 \|")
        job.process.kill()  # the `deepspeed` runner: SIGKILL, no chance to forward anything
        job.process.wait()
        seconds = job.wait_group_gone(90)
        output = job.output()
        assert "the launcher (pid" in output and "is gone" in output, output[-4000:]
        assert job.latest() == f"global_step{_stopped_iteration(output)}"
        print(f"ranks gone {seconds:.1f} s after the launcher was killed")
    finally:
        job.kill()


def test_a_stopped_rank_fails_the_job_naming_it(checkpoint_corpus, tmp_path):
    job = Job(tmp_path, checkpoint_corpus, "--distributed-timeout-minutes", "1")
    try:
        job.wait_for(r"iteration +2 \|")
        stopped = job.rank_pid(1)
        os.kill(stopped, signal.SIGSTOP)
        start = time.monotonic()
        code = job.process.wait(timeout=180)
        seconds = time.monotonic() - start
        output = job.output()
        assert code == 4, output[-4000:]
        assert re.search(rf"rank 1 \(host \S+, pid {stopped}, at iteration \d+\) stopped sending heartbeats",
                         output), output[-4000:]
        assert re.search(rf"watchdog: rank 1 \(host \S+, pid {stopped}.*has sent no heartbeat", output)
        assert "--distributed-timeout-minutes 1" in output
        print(f"job failed {seconds:.0f} s after rank 1 was stopped")
        job.wait_group_gone(60)
        assert not job.shm_files()
    finally:
        job.kill()


def test_entry_script_exit_codes_for_bad_numbers_and_divergence(checkpoint_corpus, tmp_path):
    """One process, no launcher: `--lr nan` exits 1 at parse time; `--lr 1e6` diverges and exits 3."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    save = str(tmp_path / "checkpoints")
    flags = _flags(checkpoint_corpus, save)
    flags[flags.index("--train-iters") + 1] = "12"
    flags[flags.index("--save-interval") + 1] = "1"
    flags[flags.index("--deepspeed_config") + 1] = os.path.join(REPO, "deepspeed_configs", "zero0.json")
    lr = flags.index("--lr") + 1

    flags[lr] = "nan"
    result = subprocess.run(["python", "pretrain_gpt_ds.py", *flags], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "--lr nan is not a finite number" in result.stderr, result.stderr[-2000:]

    flags[lr] = "1e6"
    env["MASTER_PORT"] = str(random.randint(20000, 40000))
    result = subprocess.run(["python", "pretrain_gpt_ds.py", *flags], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    found = re.search(r"training diverged at iteration (\d+):", result.stderr)
    assert found, result.stderr[-3000:]
    good = int(found.group(1)) - 1
    assert open(os.path.join(save, "latest")).read() == f"global_step{good}"
    assert f"--load {save}" in result.stderr and "lower --lr" in result.stderr
