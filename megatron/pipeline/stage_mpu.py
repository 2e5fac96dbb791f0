"""The mpu handed to the DeepSpeed engine of one pipeline stage (Megatron schedules).

Each stage's engine holds only that stage's parameters, but clipping needs the norm over every stage.
DeepSpeed sums squared gradient norms over ``get_model_parallel_group()`` -- TP x PP here, every stage
included -- and counts TP-replicated parameters (norms, biases) only on ranks where a "model-parallel rank"
is 0: ZeRO-1/2 and the bf16 optimizer read ``get_tensor_model_parallel_rank()``, while ZeRO-3
(``runtime/zero/stage3.py``) and the fp32 ZeRO-0 clip (``runtime/utils.clip_grad_norm_``) read
``get_model_parallel_rank()``. The global mpu returns this rank's index in TP x PP there, which is 0 on the
first stage only, so the replicated parameters of every other stage would drop out of the norm. This view
returns the TP rank instead: each stage counts its replicated parameters once.

DeepSpeed also names checkpoint files ``mp_rank_XX`` from ``get_model_parallel_rank()`` at engine
construction; :func:`give_unique_checkpoint_names` restores the TP x PP index there, so the files of
different stages never collide (mp_rank = pp_rank * TP + tp_rank, the same numbering as DeepSpeed's
PipelineEngine uses).
"""

from megatron.core import parallel_state as ps
from megatron.core.deepspeed_mpu import DeepSpeedMPU


class StageMPU(DeepSpeedMPU):
    get_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)

    def __repr__(self):
        return f"StageMPU(stage {ps.get_pipeline_model_parallel_rank()} of {ps.get_layout().describe()})"


def give_unique_checkpoint_names(engine) -> None:
    """Call right after deepspeed.initialize(mpu=StageMPU()): per-stage ``mp_rank_XX`` file names."""
    engine.checkpoint_mp_rank = ps.get_model_parallel_rank()
