"""When to save: every ``save_interval`` iterations, at the end of training, and on SIGTERM/SIGINT.

A scheduler (SLURM, Kubernetes) sends SIGTERM before killing a job, and a user presses Ctrl-C; either way the
run should leave a checkpoint of the last finished iteration. The handler only raises a flag; at the end of
each iteration the ranks all-reduce it (MAX), so they agree on stopping even if the signal reached only some of
them, save together and leave the loop. Launchers forward signals (the `deepspeed` launcher answers its own
SIGTERM/SIGINT with SIGTERM to every rank, so a rank often receives two at once): a repeat of the signal within
``REPEAT_GRACE_S`` is the same request; a later one gets the default action, so a stuck run can still be
interrupted. A stop requested this way is recorded in ``TrainState.stop_reason``; the entry script then exits
with ``EXIT_STOPPED`` (75) so a scheduler can requeue the job with ``--load``. The kill-switch file
(``--kill-switch-file``) is the same request made by creating a file.

Before every save the parameters are checked finite on every rank: a non-finite model is never saved and never
becomes ``latest``.
"""

import math
import os
import signal
import time
from typing import Optional

import torch

from megatron.checkpointing.load import ResumePoint, load_checkpoint
from megatron.checkpointing.save import print_rank0, save_checkpoint
from megatron.core import comm


EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_stop_agreed = False  # set once the ranks agreed to stop: later signals are the launcher repeating the request


class NonFiniteModelError(FloatingPointError):
    """The model (or the step's loss) is not finite: it is not saved. The training loop's divergence error
    (megatron/training/loop.py TrainingDiverged) is one of these."""


def stop_agreed() -> bool:
    """True once a Checkpointer of this process stopped a run on a signal or the kill switch."""
    return _stop_agreed
REPEAT_GRACE_S = 10.0
_KILL_SWITCH = 1 << 8  # flag bit, next to the signal number in the all-reduced stop flag


class Checkpointer:
    """``on_iteration_end`` hook for ``train()``; use as a context manager to catch exit signals.

    Args:
        engine: the DeepSpeed engine.
        save_dir: where to save (None: never save; signals then only stop the run).
        save_interval: save every this many iterations (None: only at the end and on signals).
        keep_last: keep only the newest N checkpoints.
        config: the RunConfig, stored in every checkpoint.
        tokens_per_sample: sequence length, to record consumed tokens.
    """

    def __init__(self, engine, save_dir: Optional[str], *, save_interval: Optional[int] = None,
                 keep_last: Optional[int] = None, config=None, tokens_per_sample: Optional[int] = None,
                 log=None, kill_switch_file: Optional[str] = None, handle_signals: bool = True,
                 tokenizer: Optional[dict] = None):
        self.engine, self.save_dir = engine, save_dir
        self.save_interval, self.keep_last = save_interval, keep_last
        self.config, self.tokens_per_sample = config, tokens_per_sample
        self.log = log or print_rank0
        self.last_saved_iteration: Optional[int] = None
        self.last_saved_dir: Optional[str] = save_dir  # where last_saved_iteration lies (--load after a resume)
        self.received_signal: Optional[int] = None
        self.kill_switch_file, self.handle_signals = kill_switch_file, handle_signals
        self.tokenizer = tokenizer  # fingerprint (tokenizer_check.py): saved, and compared on resume
        self._signal_time = 0.0
        self._previous_handlers = {}

    @classmethod
    def from_config(cls, engine, config, log=None, tokenizer: Optional[dict] = None) -> "Checkpointer":
        """From a RunConfig's --save / --save-interval / --keep-last (the config is stored in each save)."""
        checkpoint = config.checkpoint
        return cls(engine, checkpoint.save, save_interval=checkpoint.save_interval, keep_last=checkpoint.keep_last,
                   config=config, tokens_per_sample=config.model.seq_length, log=log,
                   kill_switch_file=config.training.kill_switch_file,
                   handle_signals=config.training.exit_signal_handler, tokenizer=tokenizer)

    def resume(self) -> Optional[ResumePoint]:
        """Load --load as the config asks (--finetune, --no-load-optim, --no-load-rng, --universal-checkpoint);
        None without --load or when the folder holds no checkpoint yet. The random streams come back with
        :meth:`restore_rng`."""
        checkpoint = self.config.checkpoint
        if not checkpoint.load:
            return None
        resumed = load_checkpoint(self.engine, checkpoint.load, finetune=checkpoint.finetune,
                                  no_load_optim=checkpoint.no_load_optim, no_load_rng=checkpoint.no_load_rng,
                                  universal=checkpoint.universal_checkpoint, restore_rng=False, log=self.log,
                                  tokenizer=self.tokenizer)
        if resumed is not None:
            self.last_saved_iteration = resumed.iteration if not checkpoint.finetune else None
            self.last_saved_dir = checkpoint.load
        self._resumed = resumed
        return resumed

    def restore_rng(self):
        """Restore the random streams of the resumed checkpoint. Call it after everything that draws random
        numbers at start-up and not at a resume point (building the data iterator draws one number from
        torch's default generator), right before the first step."""
        if getattr(self, "_resumed", None) is not None:
            self._resumed.restore_rng()

    # --- signals -----------------------------------------------------------------------------------
    def __enter__(self):
        global _stop_agreed
        _stop_agreed = False
        if not self.handle_signals:
            return self
        for number in EXIT_SIGNALS:
            self._previous_handlers[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers.clear()
        return False

    def _on_signal(self, number, frame):
        now = time.monotonic()
        if self.received_signal is not None and now - self._signal_time > REPEAT_GRACE_S:
            # Asked again long after the first request: the run is stuck, give the default action.
            signal.signal(number, self._previous_handlers.get(number, signal.SIG_DFL))
            os.kill(os.getpid(), number)
            return
        if self.received_signal is None:
            self.received_signal, self._signal_time = number, now

    def _stop_flag(self) -> int:
        """This rank's request: the signal number, or the kill-switch bit, or 0; MAX over ranks."""
        flag = self.received_signal or 0
        if self.kill_switch_file and os.path.exists(self.kill_switch_file):
            flag |= _KILL_SWITCH
        tensor = torch.tensor([flag], dtype=torch.int32)
        comm.all_reduce(tensor, op=comm.ReduceOp.MAX)
        return int(tensor.item())

    @staticmethod
    def _describe_stop(flag: int) -> str:
        if flag & _KILL_SWITCH:
            return "kill switch file"
        return f"signal {signal.Signals(flag).name}"

    # --- saving ------------------------------------------------------------------------------------
    def _check_finite(self, state):
        """Every rank checks its parameters (and the step's loss); a non-finite model is never saved."""
        local = 0
        if state.losses and not math.isfinite(state.losses[-1]):
            local = 1
        for param in self.engine.module.parameters():
            local_part = getattr(param, "ds_tensor", None)  # ZeRO-3 keeps only this rank's partition
            data = (local_part if local_part is not None else param).detach()
            if data.numel() and not bool(torch.isfinite(data).all()):
                local = 1
                break
        flag = torch.tensor([local], dtype=torch.int32)
        comm.all_reduce(flag, op=comm.ReduceOp.MAX)
        if flag.item():
            raise NonFiniteModelError(f"the model is not finite at iteration {state.iteration} (non-finite parameters "
                                   f"or loss): refusing to save it")

    def last_good_note(self) -> str:
        """Where to resume from after a divergence, for error messages."""
        if self.last_saved_iteration is None:
            where = ("no checkpoint of this run exists yet" if self.save_dir else
                     "this run saves no checkpoints (no --save)")
            return f"{where}; restart with a lower --lr (and a longer warmup or --clip-grad)"
        folder = os.path.join(self.last_saved_dir, f"global_step{self.last_saved_iteration}")
        return (f"The last good checkpoint is {folder} (iteration {self.last_saved_iteration}, named by `latest`): "
                f"resume with --load {self.last_saved_dir} and a lower --lr (or a longer warmup, or --clip-grad)")

    def save(self, state):
        if not self.save_dir or self.last_saved_iteration == state.iteration:
            return
        self._check_finite(state)
        tokens = state.consumed_train_samples * self.tokens_per_sample if self.tokens_per_sample else None
        folder = save_checkpoint(self.engine, self.save_dir, iteration=state.iteration,
                                 consumed_train_samples=state.consumed_train_samples,
                                 consumed_train_tokens=tokens, config=self.config, keep_last=self.keep_last,
                                 tokenizer=self.tokenizer)
        self.last_saved_iteration, self.last_saved_dir = state.iteration, self.save_dir
        self.log(f"> saved checkpoint {folder}")

    def on_iteration_end(self, state) -> bool:
        """Saves when due; returns True (stop training) after a signal, once the checkpoint is written."""
        flag = self._stop_flag()
        stop = flag != 0
        if stop or (self.save_interval and state.iteration % self.save_interval == 0):
            self.save(state)
        if stop:
            global _stop_agreed
            _stop_agreed = True
            state.stop_reason = self._describe_stop(flag)
            self.log(f"> {state.stop_reason}: stopping after iteration {state.iteration}"
                     f"{' (checkpoint saved)' if self.save_dir else ''}")
        return stop

    __call__ = on_iteration_end

    def finish(self, state):
        """The end-of-training save (skipped if this iteration is already saved, or nothing was trained)."""
        if state.iteration > 0:
            self.save(state)
