"""The model-parallel unit (mpu) handed to DeepSpeed.

DeepSpeed calls these methods unconditionally (engine, ZeRO, gradient clipping, checkpoint names):
``get_{data,model}_parallel_{group,world_size,rank}`` and ``get_data_parallel_group_ranks``; it uses the
``get_tensor_model_parallel_*`` and ``get_pipeline_model_parallel_*`` methods when present.

Deliberately absent: ``initialize_sequence_parallel`` and ``get_sequence_parallel_*``. DeepSpeed treats an
mpu with ``initialize_sequence_parallel`` as a DeepSpeed-Ulysses mpu and then ignores its data-parallel group
(ZeRO would partition over the wrong ranks); measured, with those getters present ZeRO 0-2 summed gradients
over the sequence-parallel ranks (2x at SP=2) and ZeRO-3 did not reduce them at all. Megatron's sequence
parallelism lives inside the TP group and needs nothing from DeepSpeed.

Context parallelism (ring attention or Ulysses) is instead folded into the data-parallel group we hand over:
context-parallel ranks hold identical parameters, so for DeepSpeed they are just more data-parallel ranks.
``get_data_parallel_*`` here therefore mean DP x CP (Megatron-LM's ``with_context_parallel=True``), and ZeRO
averages and partitions over all of them; the loss each CP rank returns must be scaled so that this average
is the mean over all tokens of the global batch.

Semantics DeepSpeed relies on:
- the model-parallel group spans TP x PP, every rank that holds different parameters of one replica, so that
  gradient norms summed over it cover the whole model;
- ``get_model_parallel_rank`` is this rank's index in that group, unique per replica, which DeepSpeed uses to
  name checkpoint files (``mp_rank_XX``) and to count TP-replicated parameters once (rank 0).
"""

import functools

from megatron.core import parallel_state as ps


def _with_context(getter):
    return staticmethod(functools.partial(getter, with_context_parallel=True))


class DeepSpeedMPU:
    get_data_parallel_group = _with_context(ps.get_data_parallel_group)
    get_data_parallel_world_size = _with_context(ps.get_data_parallel_world_size)
    get_data_parallel_rank = _with_context(ps.get_data_parallel_rank)
    get_data_parallel_group_ranks = _with_context(ps.get_data_parallel_group_ranks)

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
