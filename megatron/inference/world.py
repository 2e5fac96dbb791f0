"""The process world of the generation tools: every launched rank is a tensor-parallel rank."""

import os
import socket

from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.core.launch_env import detect_launcher


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def init_inference_world(timeout_minutes: float = 10.0) -> bool:
    """Join the launched world (a world of one without a launcher) and make TP = its size, PP = 1.

    Returns whether this call created the world (and should destroy it). A plain process takes a free port
    for its world of one unless MASTER_PORT is exported, so several can run side by side.
    """
    owns_world = not comm.is_initialized()
    if owns_world:
        if detect_launcher(os.environ) == "none" and "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = _free_port()
        comm.init_distributed(timeout_minutes=timeout_minutes)
    ps.initialize_model_parallel(tensor_model_parallel_size=comm.get_world_size())
    return owns_world
