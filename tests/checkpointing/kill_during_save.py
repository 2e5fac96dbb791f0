"""A one-rank training process that saves at step 2, then is SIGKILLed in the middle of its step-4 save.

Run as ``python -m tests.checkpointing.kill_during_save SAVE_DIR``. After the step-2 save it writes the model's
weights to SAVE_DIR/../weights_step2.pt (for the parent to compare with what a resume loads). During the step-4
save, right after DeepSpeed wrote its first file, the process kills itself with SIGKILL: no handler, no
cleanup, exactly what an OOM killer or a preempted node does.
"""

import os
import signal
import socket
import sys


def main(save_dir: str):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0", "DS_ACCELERATOR": "cpu"})
    import torch
    from deepspeed.utils import logger

    logger.setLevel("WARNING")
    from megatron.checkpointing import Checkpointer
    from megatron.core import comm
    from megatron.training.loop import TrainState
    from tests.checkpointing.tiny_runs import build_tiny_engine, run_steps

    comm.init_distributed("gloo")
    engine = build_tiny_engine(tp=1, zero=1)
    checkpointer = Checkpointer(engine, save_dir, log=lambda _: None)
    state = run_steps(engine, TrainState(), 2)
    checkpointer.save(state)
    weights = {name: param.detach().clone() for name, param in engine.module.named_parameters()}
    torch.save(weights, os.path.join(os.path.dirname(save_dir), "weights_step2.pt"))

    state = run_steps(engine, state, 4)
    writer = engine.checkpoint_engine
    original_save, written = writer.save, []

    def save_then_die(state_dict, path):
        if written:  # one file is complete on disk, the next never will be
            os.kill(os.getpid(), signal.SIGKILL)
        original_save(state_dict, path)
        written.append(path)

    writer.save = save_then_die
    checkpointer.save(state)
    print("the save finished: the kill did not happen", flush=True)
    sys.exit(3)


if __name__ == "__main__":
    main(sys.argv[1])
