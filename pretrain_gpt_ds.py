"""Pre-train a GPT- or Llama-style model with Megatron tensor parallelism inside DeepSpeed engines.

    deepspeed --num_gpus 2 pretrain_gpt_ds.py --tensor-model-parallel-size 2 ... \
        --deepspeed --deepspeed_config deepspeed_configs/zero1.json

Every flag is documented in docs/configuration.md. With no --data-path the run trains on a built-in English
corpus, so the command works on a fresh machine.
"""

import os
import signal
import sys

from megatron.checkpointing.checkpointer import EXIT_SIGNALS, stop_agreed
from megatron.config import ConfigError, parse_config
from megatron.core import comm
from megatron.training.backend import choose_backend
from megatron.training.exit_codes import EXIT_DIVERGED, EXIT_HUNG, EXIT_STOPPED
from megatron.training.loop import TrainingDiverged
from megatron.training.pretrain import pretrain
from megatron.training.run_guard import CollectiveFailure


def _signal_outside_training(number, frame):
    """SIGTERM/SIGINT while no training loop handles them: after a stop was agreed (the checkpoint is saved
    and the rank is tearing down) the launcher's repeated signal is ignored, so the rank still exits 75;
    otherwise the default action."""
    if stop_agreed():
        return
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)


def main(argv=None):
    """Exit codes: megatron/training/exit_codes.py (0 done, 1 error, 3 diverged, 4 hung peer, 75 stopped)."""
    try:
        config = parse_config(argv)  # every contradiction and impossible combination fails here, before any engine
    except ConfigError as error:
        sys.exit(f"pretrain_gpt_ds.py: configuration error: {error}")
    for number in EXIT_SIGNALS:
        signal.signal(number, _signal_outside_training)
    backend, note = choose_backend(config.parallel.distributed_backend)
    comm.init_distributed(backend, timeout_minutes=config.parallel.distributed_timeout_minutes)
    if note and comm.get_rank() == 0:
        print(f"> note: {note}", flush=True)
    try:
        state = pretrain(config)
    except TrainingDiverged as error:
        comm.destroy_world()  # every rank saw the same all-reduced numbers and raised together
        print(f"pretrain_gpt_ds.py: training diverged: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_DIVERGED)
    except CollectiveFailure as error:
        print(f"pretrain_gpt_ds.py: {error}", file=sys.stderr, flush=True)
        # A peer is stopped or gone: tearing the groups down could wait on it, so leave at once.
        os._exit(EXIT_HUNG)
    except BaseException:
        comm.destroy_world()
        raise
    comm.destroy_world()
    if state.stop_reason:
        print(f"pretrain_gpt_ds.py: stopped by {state.stop_reason} at iteration {state.iteration} after saving; "
              f"exit code {EXIT_STOPPED} (resume with --load)", flush=True)
        sys.exit(EXIT_STOPPED)


if __name__ == "__main__":
    main(sys.argv[1:])
