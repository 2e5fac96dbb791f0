"""The model-parallel unit (mpu) handed to DeepSpeed.

DeepSpeed calls these methods unconditionally (engine, ZeRO, gradient clipping, checkpoint names):
``get_{data,model}_parallel_{group,world_size,rank}`` and ``get_data_parallel_group_ranks``; it uses the
``get_tensor_model_parallel_*`` and ``get_pipeline_model_parallel_*`` methods when present.

Deliberately absent: ``initialize_sequence_parallel`` and ``get_sequence_parallel_*``. DeepSpeed treats an
mpu with ``initialize_sequence_parallel`` as a DeepSpeed-Ulysses mpu and then ignores its data-parallel group
(ZeRO would partition over the wrong ranks). Megatron's sequence parallelism lives inside the TP group and
needs nothing from DeepSpeed.

Semantics DeepSpeed relies on:
- the model-parallel group spans TP x PP, every rank that holds different parameters of one replica, so that
  gradient norms summed over it cover the whole model;
- ``get_model_parallel_rank`` is this rank's index in that group, unique per replica, which DeepSpeed uses to
  name checkpoint files (``mp_rank_XX``) and to count TP-replicated parameters once (rank 0).
"""

from megatron.core import parallel_state as ps


class DeepSpeedMPU:
    get_data_parallel_group = staticmethod(ps.get_data_parallel_group)
    get_data_parallel_world_size = staticmethod(ps.get_data_parallel_world_size)
    get_data_parallel_rank = staticmethod(ps.get_data_parallel_rank)
    get_data_parallel_group_ranks = staticmethod(ps.get_data_parallel_group_ranks)

    get_model_parallel_group = staticmethod(ps.get_model_parallel_group)
    get_model_parallel_world_size = staticmethod(ps.get_model_parallel_world_size)
    get_model_parallel_rank = staticmethod(ps.get_model_parallel_rank)

    get_tensor_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_src_rank = staticmethod(ps.get_tensor_model_parallel_src_rank)

    get_pipeline_model_parallel_group = staticmethod(ps.get_pipeline_model_parallel_group)
    get_pipeline_model_parallel_world_size = staticmethod(ps.get_pipeline_model_parallel_world_size)
    get_pipeline_model_parallel_rank = staticmethod(ps.get_pipeline_model_parallel_rank)

    def __repr__(self):
        return f"DeepSpeedMPU({ps.get_layout().describe()})"
