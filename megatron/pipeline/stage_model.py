"""A pipeline rank's share of GPTModel for the Megatron schedules: its model chunks in one module.

Chunk c of pipeline rank r is virtual stage s = c * PP + r and is a GPTModel over layers
[s * n, (s + 1) * n) (n = num_layers / (PP * chunks)), with the embedding on virtual stage 0
(pre_process) and the final norm and head on the last one (post_process) -- the same classes and parameter
names as the non-pipeline model (param_names.py maps them).

The tied GPT head on the last stage reads a *replica* of the first stage's word-embedding table, which is
not a parameter: the first stage owns the table, the replica's gradient is sent there and enters the
first stage's last backward (tied_embedding.py), and the updated table is copied back after each step. So
no DeepSpeed engine ever sees two copies of one weight: ZeRO-1/2/3, CPU offload and the gradient norm
count it exactly once, with no per-ZeRO-stage bookkeeping.
"""

import dataclasses
from typing import List, Optional

import torch
from torch import nn

from megatron.core import parallel_state as ps
from megatron.model import GPTModel, build_universal_checkpoint_info, tied_head_logits
from megatron.model.config_checks import effective_sequence_parallel, original_vocab_size, padded_vocab_size
from megatron.model.gpt_model import DEFAULT_INIT_SEED
from megatron.pipeline.param_names import first_layer_of_chunk, stage_chunks_to_model_name


class TiedOutputLayerReplica(nn.Module):
    """The tied LM head of a last stage: logits [s, b, V/tp] = hidden @ replica^T, vocab-sharded.

    ``master`` is an fp32 [V/tp, h] leaf tensor that is deliberately not an nn.Parameter (see the module
    docstring); forward casts it to the activations' dtype, so bf16 runs use the same bf16 table as the
    first stage, and its gradient accumulates in fp32 over the micro-batches of a step.
    """

    def __init__(self, config, *, sequence_parallel: bool):
        super().__init__()
        from deepspeed.accelerator import get_accelerator

        self.sequence_parallel = sequence_parallel
        self.vocab_size = original_vocab_size(config)
        self.master = torch.zeros(padded_vocab_size(config) // ps.get_tensor_model_parallel_world_size(),
                                  config.hidden_size, dtype=torch.float32,
                                  device=get_accelerator().current_device_name(), requires_grad=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return tied_head_logits(hidden_states, self.master.to(hidden_states.dtype), self.sequence_parallel,
                                self.vocab_size)


class ModelChunks(nn.Module):
    """All model chunks of this rank, so that one DeepSpeed engine (one optimizer, one gradient norm, one
    ZeRO partitioning) holds them. ``forward(chunk, **inputs)`` runs one chunk through the engine, which
    keeps DeepSpeed's forward hooks (ZeRO-3 gathering) on every call."""

    def __init__(self, chunks: List[GPTModel], layers_per_chunk: int, tied_embedding: bool):
        super().__init__()
        self.chunks = nn.ModuleList(chunks)
        self.layers_per_chunk = layers_per_chunk
        self.tied_embedding = tied_embedding  # GPT's head shares the first stage's table (tied_embedding.py)
        self.universal_checkpoint_info = build_universal_checkpoint_info(self, original_vocab_size(chunks[0].config))

    def forward(self, chunk: int, **inputs) -> torch.Tensor:
        return self.chunks[chunk](**inputs)

    def to_model_name(self, name: str) -> str:
        """This module's parameter name -> GPTModel's (see param_names.py)."""
        return stage_chunks_to_model_name(name, pipeline_rank=ps.get_pipeline_model_parallel_rank(),
                                          pipeline_size=ps.get_pipeline_model_parallel_world_size(),
                                          layers_per_chunk=self.layers_per_chunk)

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)


def layers_per_chunk(num_layers: int, pipeline_size: int, num_chunks: int) -> int:
    stages = pipeline_size * num_chunks
    if num_layers % stages:
        what = f"{pipeline_size} stages" + (f" x {num_chunks} chunks per stage" if num_chunks > 1 else "")
        raise ValueError(f"num_layers {num_layers} is not divisible into {what} = {stages} equal parts; "
                         f"change --num-layers, --pipeline-model-parallel-size or "
                         f"--num-layers-per-virtual-pipeline-stage")
    return num_layers // stages


def build_stage_chunks(config, *, num_chunks: int = 1, sequence_parallel: bool = False,
                       recompute_granularity: Optional[str] = None, partition_activations: bool = False,
                       params_dtype: torch.dtype = torch.float32, init_seed: int = DEFAULT_INIT_SEED,
                       moe_config=None) -> ModelChunks:
    """This rank's chunks of GPTModel(config) for the current parallel_state pipeline layout; each chunk's
    layers get the initial values of the same layers of GPTModel(config, init_seed=init_seed)."""
    pipeline_size, rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    if pipeline_size < 2:
        raise ValueError("pipeline stages need --pipeline-model-parallel-size >= 2; with 1, train GPTModel "
                         "directly")
    per_chunk = layers_per_chunk(config.num_layers, pipeline_size, num_chunks)
    last_stage = pipeline_size * num_chunks - 1
    tied = not config.untie_embeddings_and_output_weights
    chunks = []
    for chunk in range(num_chunks):
        stage = chunk * pipeline_size + rank
        pre_process, post_process = stage == 0, stage == last_stage
        replica_head = post_process and tied
        # A tied last stage is built with an untied head, which is then replaced by the replica head.
        chunk_config = dataclasses.replace(config, untie_embeddings_and_output_weights=True) if replica_head \
            else config
        model = GPTModel(chunk_config, sequence_parallel=sequence_parallel,
                         recompute_granularity=recompute_granularity, partition_activations=partition_activations,
                         params_dtype=params_dtype, pre_process=pre_process, post_process=post_process,
                         num_layers=per_chunk, init_seed=init_seed, moe_config=moe_config,
                         layer_offset=first_layer_of_chunk(chunk, rank, pipeline_size, per_chunk))
        if replica_head:
            model.output_layer = TiedOutputLayerReplica(
                config, sequence_parallel=effective_sequence_parallel(sequence_parallel))
        chunks.append(model)
    return ModelChunks(chunks, per_chunk, tied)
