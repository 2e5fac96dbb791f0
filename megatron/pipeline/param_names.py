"""One checkpoint layout: parameter names of the pipeline forms <-> GPTModel's names, 1:1.

GPTModel (the non-pipeline model) names its parameters

    embedding.word_embeddings.weight, embedding.position_embeddings.weight (GPT only)
    layers.{i}.<layer parameter>                     i = 0 .. num_layers-1
    final_norm.weight / .bias
    output_layer.linear.weight                       untied head (Llama) only

The two pipeline forms hold the same parameters under other names:

DeepSpeed PipelineModule (deepspeed_pipeline.py), layer spec j holds

    j = 0               embedding: ``0.<name>``, or ``tied_modules.embedding.<name>`` when the head is tied
    j = 1 .. L          transformer layer j-1: ``{j}.<layer parameter>``
    j = L+1             ``{L+1}.final_norm.<name>``
    j = L+2             untied head ``{L+2}.output_layer.<name>``; the tied head's table is
                        ``tied_modules.embedding.word_embeddings.weight`` on the last stage too

Megatron schedules (stage_model.py): each rank holds model chunks ``chunks.{c}`` that are GPTModels over a
slice of the layers; chunk c of pipeline rank r is virtual stage c * PP + r and holds layers
[(c * PP + r) * n, (c * PP + r + 1) * n) with n layers per chunk, named ``chunks.{c}.layers.{k}`` locally.

Checkpoint code converts a pipeline rank's state to model names with the ``*_to_model_name`` functions and
back with ``model_to_*_name``; tied copies map to the same model name and hold equal values.
"""

import re
from typing import Callable, Dict, Optional

import torch
from torch import nn

TIED_EMBEDDING_KEY = "embedding"
_TIED_PREFIX = f"tied_modules.{TIED_EMBEDDING_KEY}."


def _split_index(name: str):
    head, _, rest = name.partition(".")
    if not head.isdigit() or not rest:
        raise ValueError(f"parameter name {name!r} does not start with a layer index")
    return int(head), rest


def pipeline_module_to_model_name(name: str, num_layers: int) -> str:
    """DeepSpeed PipelineModule name -> GPTModel name, e.g. '3.mlp.linear_fc1.weight' -> 'layers.2.mlp...'."""
    if name.startswith(_TIED_PREFIX):
        return "embedding." + name[len(_TIED_PREFIX):]
    index, rest = _split_index(name)
    if index == 0:
        return "embedding." + rest
    if index <= num_layers:
        return f"layers.{index - 1}.{rest}"
    if index in (num_layers + 1, num_layers + 2) and rest.split(".")[0] in ("final_norm", "output_layer"):
        return rest
    raise ValueError(f"parameter name {name!r} is not part of a {num_layers}-layer GPT pipeline module")


def model_to_pipeline_module_name(name: str, num_layers: int, tied: bool) -> str:
    """GPTModel name -> DeepSpeed PipelineModule name (the first stage's name for the tied table)."""
    first, _, rest = name.partition(".")
    if first == "embedding":
        return (_TIED_PREFIX if tied else "0.") + rest
    if first == "layers":
        index, rest = _split_index(rest)
        if index >= num_layers:
            raise ValueError(f"{name!r}: layer {index} does not exist in a {num_layers}-layer model")
        return f"{index + 1}.{rest}"
    if first == "final_norm":
        return f"{num_layers + 1}.{name}"
    if first == "output_layer":
        return f"{num_layers + 2}.{name}"
    raise ValueError(f"{name!r} is not a GPTModel parameter name")


def first_layer_of_chunk(chunk: int, pipeline_rank: int, pipeline_size: int, layers_per_chunk: int) -> int:
    """Global index of the first layer of a rank's model chunk (virtual stage chunk * PP + rank)."""
    return (chunk * pipeline_size + pipeline_rank) * layers_per_chunk


def stage_chunks_to_model_name(name: str, *, pipeline_rank: int, pipeline_size: int,
                               layers_per_chunk: int) -> str:
    """'chunks.{c}.layers.{k}.<p>' -> 'layers.{first layer of chunk c + k}.<p>'; other chunk names lose the
    'chunks.{c}.' prefix (embedding.*, final_norm.*, output_layer.*)."""
    match = re.match(r"chunks\.(\d+)\.(.+)$", name)
    if match is None:
        raise ValueError(f"{name!r} is not a pipeline-stage parameter name (expected 'chunks.<c>.<name>')")
    chunk, rest = int(match.group(1)), match.group(2)
    layer = re.match(r"layers\.(\d+)\.(.+)$", rest)
    if layer is None:
        return rest
    offset = first_layer_of_chunk(chunk, pipeline_rank, pipeline_size, layers_per_chunk)
    return f"layers.{offset + int(layer.group(1))}.{layer.group(2)}"


def model_to_stage_chunks_name(name: str, *, pipeline_rank: int, pipeline_size: int, num_chunks: int,
                               layers_per_chunk: int) -> Optional[str]:
    """GPTModel name -> this rank's chunk name, or None when the parameter lives on another rank."""
    first, _, rest = name.partition(".")
    last_chunk, last_rank = num_chunks - 1, pipeline_size - 1
    if first == "embedding":
        return f"chunks.0.{name}" if pipeline_rank == 0 else None
    if first in ("final_norm", "output_layer"):
        return f"chunks.{last_chunk}.{name}" if pipeline_rank == last_rank else None
    if first != "layers":
        raise ValueError(f"{name!r} is not a GPTModel parameter name")
    index, rest = _split_index(rest)
    virtual_stage, local = divmod(index, layers_per_chunk)
    chunk, owner = divmod(virtual_stage, pipeline_size)
    if owner != pipeline_rank:
        return None
    if chunk >= num_chunks:
        raise ValueError(f"{name!r}: layer {index} does not exist with {num_chunks} chunks of "
                         f"{layers_per_chunk} layers on {pipeline_size} stages")
    return f"chunks.{chunk}.layers.{local}.{rest}"


def load_model_state(module: nn.Module, model_state: Dict[str, torch.Tensor],
                     to_model_name: Callable[[str], str]) -> None:
    """Copy a GPTModel state dict (this TP rank's shards) into a pipeline form's ``module``.

    Every parameter of ``module`` must be found under its model name with the same shape; extra entries of
    ``model_state`` (other stages' parameters) are ignored.
    """
    with torch.no_grad():
        for name, param in module.named_parameters():
            source_name = to_model_name(name)
            if source_name not in model_state:
                raise ValueError(f"{name} maps to {source_name!r}, which the model state does not contain")
            source = model_state[source_name]
            if tuple(source.shape) != tuple(param.shape):
                raise ValueError(f"{name} has shape {tuple(param.shape)} but {source_name} has "
                                 f"{tuple(source.shape)}; was the state saved with another tensor-parallel size?")
            param.copy_(source.to(param.dtype))


def to_model_state(module: nn.Module, to_model_name: Callable[[str], str]) -> Dict[str, torch.Tensor]:
    """This rank's parameters of a pipeline form, keyed by GPTModel names (tied copies appear once)."""
    return {to_model_name(name): param.detach() for name, param in module.named_parameters()}
