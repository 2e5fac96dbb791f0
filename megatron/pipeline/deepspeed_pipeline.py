"""The pipeline form of GPTModel for DeepSpeed's PipelineEngine (``--pipeline-schedule deepspeed``).

A ``deepspeed.pipe.PipelineModule`` of LayerSpecs over the model's own blocks (pipe_layers.py):

    [embedding] + [transformer layer] * L + [final norm] + [LM head]

The GPT head is tied to the embedding through a ``TiedLayerSpec`` (DeepSpeed sums the two copies'
gradients before each step); Llama's untied head is a plain LayerSpec. Layers are partitioned over the stages
by ``partition_method`` (default: balance the transformer layers; "uniform" and "parameters" are DeepSpeed's
others). The topology is DeepSpeed's ``PipeModelDataParallelTopology``, whose rank order is ours
(parallel_layout.py); :func:`check_grid_matches_parallel_state` proves it at start-up.

DeepSpeed's PipelineEngine supports ZeRO-0/1 only; ZeRO-2/3 need the Megatron schedules (schedules.py).
"""

import functools
from typing import Iterable, Iterator, Tuple

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from megatron.core import parallel_state as ps
from megatron.core.grad_norm import global_grad_norm
from megatron.core.tensor_parallel import deferred_initialization, initialize_parameters
from megatron.model import build_universal_checkpoint_info
from megatron.model.config_checks import effective_sequence_parallel, original_vocab_size, validate_model_config
from megatron.model.gpt_model import DEFAULT_INIT_SEED
from megatron.pipeline.param_names import TIED_EMBEDDING_KEY, pipeline_module_to_model_name
from megatron.pipeline.pipe_layers import (
    EmbeddingPipe,
    FinalNormPipe,
    OutputLayerPipe,
    TiedOutputEmbeddingPipe,
    TransformerLayerPipe,
    pipe_loss,
    tied_lm_head,
)

DEFAULT_PARTITION_METHOD = "type:TransformerLayer"


def gpt_layer_specs(config, *, sequence_parallel: bool = False, recompute_core_attention: bool = False,
                    params_dtype: torch.dtype = torch.float32) -> list:
    """The LayerSpecs of GPTModel(config) in forward order; param_names.py documents their names."""
    common = dict(sequence_parallel=sequence_parallel, params_dtype=params_dtype)
    tied = not config.untie_embeddings_and_output_weights
    if tied:
        embedding = TiedLayerSpec(TIED_EMBEDDING_KEY, EmbeddingPipe, config,
                                  tied_weight_attr=["word_embeddings.weight"], **common)
        head = TiedLayerSpec(TIED_EMBEDDING_KEY, TiedOutputEmbeddingPipe, config, forward_fn=tied_lm_head,
                             tied_weight_attr=["word_embeddings.weight"], **common)
    else:
        embedding = LayerSpec(EmbeddingPipe, config, **common)
        head = LayerSpec(OutputLayerPipe, config, **common)
    layers = [LayerSpec(TransformerLayerPipe, config, recompute_core_attention=recompute_core_attention, **common)
              for _ in range(config.num_layers)]
    return [embedding, *layers, LayerSpec(FinalNormPipe, config, **common), head]


def pipeline_topology() -> PipeModelDataParallelTopology:
    """DeepSpeed's topology for the current parallel_state layout (axes pipe, data, model = TP)."""
    layout = ps.get_layout()
    return PipeModelDataParallelTopology(num_pp=layout.pipeline_model_parallel_size,
                                         num_mp=layout.tensor_model_parallel_size,
                                         num_dp=layout.data_parallel_size)


class GPTPipelineModule(PipelineModule):
    """GPTModel(config) as a DeepSpeed PipelineModule over the current parallel_state groups.

    Args:
        config: the model config (megatron.config.model.ModelConfig).
        partition_method: how DeepSpeed assigns layer specs to stages: "type:TransformerLayer" (equal numbers
            of transformer layers), "uniform" (equal numbers of specs) or "parameters".
        activation_checkpoint_interval: recompute every this many transformer layers in backward (0: off).
        recompute_core_attention: selective recomputation of the attention core inside each layer.
        init_seed: the run's seed; every stage's parameters get the values of GPTModel(config, init_seed=...).
    """

    def __init__(self, config, *, sequence_parallel: bool = False,
                 partition_method: str = DEFAULT_PARTITION_METHOD, activation_checkpoint_interval: int = 0,
                 recompute_core_attention: bool = False, params_dtype: torch.dtype = torch.float32,
                 init_seed: int = DEFAULT_INIT_SEED):
        validate_model_config(config)
        stages = ps.get_pipeline_model_parallel_world_size()
        if config.num_layers % stages:
            raise ValueError(f"num_layers {config.num_layers} is not divisible by the pipeline-model-parallel size "
                             f"{stages}; every stage needs the same number of transformer layers: change "
                             f"--num-layers or --pipeline-model-parallel-size")
        if activation_checkpoint_interval < 0:
            raise ValueError(f"activation_checkpoint_interval must be >= 0, got {activation_checkpoint_interval}")
        specs = gpt_layer_specs(config, sequence_parallel=effective_sequence_parallel(sequence_parallel),
                                recompute_core_attention=recompute_core_attention, params_dtype=params_dtype)
        with deferred_initialization():
            super().__init__(layers=specs, topology=pipeline_topology(), loss_fn=pipe_loss,
                             partition_method=partition_method,
                             activation_checkpoint_interval=activation_checkpoint_interval,
                             checkpointable_layers=[TransformerLayerPipe.__name__])
        self.config = config
        # This stage's layers (and both copies of the tied table) get the whole model's initial values.
        initialize_parameters(self, init_seed, self.to_model_name)
        check_grid_matches_parallel_state(self._grid)
        # The same regex metadata as GPTModel's: patterns generalise layer indices, so they fit these names.
        self.universal_checkpoint_info = build_universal_checkpoint_info(self, original_vocab_size(config))

    def to_model_name(self, name: str) -> str:
        """This module's parameter name -> GPTModel's (see param_names.py)."""
        return pipeline_module_to_model_name(name, self.config.num_layers)


def check_grid_matches_parallel_state(grid) -> None:
    """DeepSpeed's PipelineParallelGrid must put every rank where parallel_state does, or the TP collectives
    inside the layers and DeepSpeed's pipeline/DP communication would pair different ranks."""
    expected = {
        "pipeline stage": (grid.get_stage_id(), ps.get_pipeline_model_parallel_rank()),
        "data-parallel rank": (grid.get_data_parallel_id(), ps.get_data_parallel_rank()),
        "tensor-parallel rank": (grid.get_slice_parallel_rank(), ps.get_tensor_model_parallel_rank()),
        "data-parallel group": (sorted(grid.dp_group), ps.get_data_parallel_group_ranks()),
        "pipeline group": (sorted(grid.pp_group), ps.get_pipeline_model_parallel_ranks()),
        "tensor-parallel group": (sorted(grid.slice_group), ps.get_tensor_model_parallel_ranks()),
    }
    wrong = {what: pair for what, pair in expected.items() if pair[0] != pair[1]}
    if wrong:
        details = "; ".join(f"{what}: DeepSpeed {ds} vs parallel_state {ours}" for what, (ds, ours) in wrong.items())
        raise ValueError(f"DeepSpeed's pipeline grid disagrees with megatron's parallel_state on rank "
                         f"{grid.get_global_rank()} ({details}); build the PipelineModule with "
                         f"topology=pipeline_topology() after parallel_state.initialize_model_parallel()")


def prepare_pipeline_engine(engine) -> None:
    """Call once on the PipelineEngine that ``deepspeed.initialize`` built around a GPTPipelineModule.

    ZeRO-1 and mixed-precision engines clip correctly as built. An fp32 ZeRO-0 PipelineEngine clips with
    ``deepspeed.runtime.utils.clip_grad_norm_``, which counts TP-replicated parameters only where the grid's
    model-parallel rank (TP x PP) is 0 -- on the first stage -- and counts the tied embedding on both stages
    that hold it (measured: the losses drift from the single-rank run by 1e-4 within 5 steps). That engine
    gets :func:`_clip_over_all_stages` instead, which also makes ``get_global_grad_norm()`` report the norm.
    """
    if not isinstance(engine.module, GPTPipelineModule):
        raise TypeError(f"expected a PipelineEngine around a GPTPipelineModule, got a {type(engine.module).__name__}")
    if not (engine.fp16_enabled() or engine.bfloat16_enabled() or engine.zero_optimization()):
        engine.clip_fp32_gradients = functools.partial(_clip_over_all_stages, engine)


def _clip_over_all_stages(engine) -> None:
    params = [param for param in engine.module.parameters() if param.grad is not None]
    # The tied copy on the last stage carries the same (summed) gradient as the first stage's: count it once.
    norm = global_grad_norm(param for param in params if not getattr(param, "ds_pipe_replicated", False))
    coefficient = min(1.0, engine.gradient_clipping() / (norm + 1e-6))
    for param in params:
        param.grad.mul_(coefficient)
    engine._global_grad_norm = norm


PipeBatch = Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, torch.Tensor]]


def to_pipe_batch(batch: dict) -> PipeBatch:
    """A data-loader batch -> DeepSpeed's (inputs for the first stage, labels for the last stage).

    The position ids always travel with the activations (RoPE and learned positions need them in every
    stage's layers); the attention mask travels when the batch has one.
    """
    tokens = batch["tokens"]
    position_ids = batch.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(tokens.size(1), device=tokens.device).unsqueeze(0).expand_as(tokens)
    inputs = (tokens, position_ids.contiguous())
    if batch.get("attention_mask") is not None:
        inputs += (batch["attention_mask"],)
    return inputs, (batch["labels"], batch["loss_mask"])


def pipe_batches(batches: Iterable[dict]) -> Iterator[PipeBatch]:
    return (to_pipe_batch(batch) for batch in batches)
