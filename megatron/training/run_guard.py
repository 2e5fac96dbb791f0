"""What guards a run from start to end: the claimed --save folder and the per-rank watchdog.

Started right after the process groups exist, before data, model or engine, so an unwritable or busy save
folder fails the job before any work is done; closed when pretrain() returns or raises.
"""

import torch

from megatron.checkpointing.save_folder import SaveFolder
from megatron.core import comm
from megatron.training.watchdog import Watchdog


class CollectiveFailure(RuntimeError):
    """A collective timed out or lost a peer; the message names the ranks that stopped progressing."""


_COMM_FAILURE_WORDS = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe")


def is_collective_failure(error: BaseException) -> bool:
    backend_error = getattr(torch.distributed, "DistBackendError", ())
    text = str(error).lower()
    return isinstance(error, backend_error) or (isinstance(error, RuntimeError)
                                                and any(word in text for word in _COMM_FAILURE_WORDS))


class RunGuard:
    def __init__(self, config, printer=print):
        self.config, self.printer = config, printer
        self.save_folder = SaveFolder(config.checkpoint.save)
        self.watchdog = None

    def start(self) -> "RunGuard":
        self.save_folder.claim()
        self.watchdog = Watchdog(comm.get_rank(), comm.get_world_size(), log=_print_any_rank).start()
        return self

    def iteration_hook(self, on_iteration_end):
        """``on_iteration_end`` for train(), reporting progress to the watchdog first."""
        def hook(state):
            self.watchdog.iteration = state.iteration
            return on_iteration_end(state)
        return hook

    def raise_if_collective_failure(self, error: BaseException):
        if self.watchdog is None or not is_collective_failure(error):
            return
        minutes = self.config.parallel.distributed_timeout_minutes
        raise CollectiveFailure(f"rank {comm.get_rank()}: a collective failed or timed out "
                                f"(--distributed-timeout-minutes {minutes:g}): {self.watchdog.describe_stragglers()}. "
                                f"Original error: {str(error).strip()[:300]}") from error

    def close(self):
        if self.watchdog is not None:
            self.watchdog.stop()
        self.save_folder.release()


def _print_any_rank(message: str):
    print(message, flush=True)
