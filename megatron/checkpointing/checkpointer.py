"""When to save: every ``save_interval`` iterations, at the end of training, and on SIGTERM/SIGINT.

A scheduler (SLURM, Kubernetes) sends SIGTERM before killing a job, and a user presses Ctrl-C; either way the
run should leave a checkpoint of the last finished iteration. The handler only raises a flag; at the end of
each iteration the ranks all-reduce it (MAX), so they agree on stopping even if the signal reached only some of
them, save together and leave the loop. A second signal restores the default action, so a stuck run can still
be interrupted.
"""

import signal
from typing import Optional

import torch

from megatron.checkpointing.load import ResumePoint, load_checkpoint
from megatron.checkpointing.save import print_rank0, save_checkpoint
from megatron.core import comm


EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
                 log=None):
        self.engine, self.save_dir = engine, save_dir
        self.save_interval, self.keep_last = save_interval, keep_last
        self.config, self.tokens_per_sample = config, tokens_per_sample
        self.log = log or print_rank0
        self.last_saved_iteration: Optional[int] = None
        self.received_signal: Optional[int] = None
        self._previous_handlers = {}

    @classmethod
    def from_config(cls, engine, config, log=None) -> "Checkpointer":
        """From a RunConfig's --save / --save-interval / --keep-last (the config is stored in each save)."""
        checkpoint = config.checkpoint
        return cls(engine, checkpoint.save, save_interval=checkpoint.save_interval, keep_last=checkpoint.keep_last,
                   config=config, tokens_per_sample=config.model.seq_length, log=log)

    def resume(self) -> Optional[ResumePoint]:
        """Load --load as the config asks (--finetune, --no-load-optim, --no-load-rng, --universal-checkpoint);
        None without --load or when the folder holds no checkpoint yet. The random streams come back with
        :meth:`restore_rng`."""
        checkpoint = self.config.checkpoint
        if not checkpoint.load:
            return None
        resumed = load_checkpoint(self.engine, checkpoint.load, finetune=checkpoint.finetune,
                                  no_load_optim=checkpoint.no_load_optim, no_load_rng=checkpoint.no_load_rng,
                                  universal=checkpoint.universal_checkpoint, restore_rng=False, log=self.log)
        if resumed is not None:
            self.last_saved_iteration = resumed.iteration if not checkpoint.finetune else None
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
        for number in EXIT_SIGNALS:
            self._previous_handlers[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers.clear()
        return False

    def _on_signal(self, number, frame):
        self.received_signal = number
        # A second signal of the same kind gets the default action (terminate / KeyboardInterrupt).
        signal.signal(number, self._previous_handlers.get(number, signal.SIG_DFL))

    def _any_rank_signalled(self) -> bool:
        flag = torch.tensor([1 if self.received_signal is not None else 0], dtype=torch.int32)
        comm.all_reduce(flag, op=comm.ReduceOp.MAX)
        return bool(flag.item())

    # --- saving ------------------------------------------------------------------------------------
    def save(self, state):
        if not self.save_dir or self.last_saved_iteration == state.iteration:
            return
        tokens = state.consumed_train_samples * self.tokens_per_sample if self.tokens_per_sample else None
        folder = save_checkpoint(self.engine, self.save_dir, iteration=state.iteration,
                                 consumed_train_samples=state.consumed_train_samples,
                                 consumed_train_tokens=tokens, config=self.config, keep_last=self.keep_last)
        self.last_saved_iteration = state.iteration
        self.log(f"> saved checkpoint {folder}")

    def on_iteration_end(self, state) -> bool:
        """Saves when due; returns True (stop training) after a signal, once the checkpoint is written."""
        stop = self._any_rank_signalled()
        if stop or (self.save_interval and state.iteration % self.save_interval == 0):
            self.save(state)
        if stop:
            self.log(f"> exit signal received: stopping after iteration {state.iteration}"
                     f"{' (checkpoint saved)' if self.save_dir else ''}")
        return stop

    __call__ = on_iteration_end

    def finish(self, state):
        """The end-of-training save (skipped if this iteration is already saved, or nothing was trained)."""
        if state.iteration > 0:
            self.save(state)
