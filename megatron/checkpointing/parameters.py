"""The model's parameters as the checkpoint sees them: GPTModel names, full (unsharded) shapes, sharding.

Every rank contributes the parameters it holds (pipeline stages hold different ones, TP ranks hold slices);
the union over the world describes the whole model independently of the layout, which is what lets a
checkpoint be checked against a model built with another TP/PP/DP/ZeRO. Pipeline forms name parameters
their own way; a module that does says how with ``to_model_name(name)`` (megatron/pipeline/param_names.py),
and everything here is keyed by the plain model's names.
"""

from typing import Callable, Dict

import torch

from megatron.core import comm
from megatron.core import parallel_state as ps


def local_shape(param: torch.Tensor) -> tuple:
    """The shape of this rank's TP slice; ZeRO-3 keeps it in ``ds_shape`` while ``param`` is partitioned."""
    return tuple(getattr(param, "ds_shape", param.shape))


def full_shape(param: torch.Tensor) -> list:
    shape = list(local_shape(param))
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= ps.get_tensor_model_parallel_world_size()
    return shape


def describe_parameter(param: torch.Tensor) -> dict:
    sharded = getattr(param, "tensor_model_parallel", False)
    return {"shape": full_shape(param), "sharding": getattr(param, "sharding", "column" if sharded else "replicated"),
            "partition_dim": getattr(param, "partition_dim", None) if sharded else None}


def model_name_function(module: torch.nn.Module) -> Callable[[str], str]:
    """This module's parameter name -> GPTModel's name (the identity for GPTModel itself)."""
    to_model_name = getattr(module, "to_model_name", None)
    return to_model_name if callable(to_model_name) else (lambda name: name)


def local_parameter_table(module: torch.nn.Module) -> Dict[str, dict]:
    to_model_name = model_name_function(module)
    return {to_model_name(name): describe_parameter(param) for name, param in module.named_parameters()}


def pipeline_name_maps(module: torch.nn.Module) -> Dict[str, Dict[str, str]]:
    """{pipeline rank: {this form's name: model name}} over the world (a collective). Pipeline stages of
    Megatron's schedules reuse local names ('chunks.0.layers.0...') for different layers, so the map is kept
    per stage."""
    to_model_name = model_name_function(module)
    local = {name: to_model_name(name) for name, _ in module.named_parameters()}
    maps: Dict[str, Dict[str, str]] = {}
    for rank, names in comm.all_gather_object((ps.get_pipeline_model_parallel_rank(), local)):
        maps.setdefault(str(rank), {}).update(names)
    return maps


def global_parameter_table(module: torch.nn.Module) -> Dict[str, dict]:
    """Union over every rank of the world (a collective: every rank must call it)."""
    table = {}
    for rank_table in comm.all_gather_object(local_parameter_table(module)):
        table.update(rank_table)
    return dict(sorted(table.items()))


def universal_checkpoint_info(module: torch.nn.Module) -> dict:
    """The model's DeepSpeed resharding declaration, whether it is exposed as a method or an attribute."""
    info = getattr(module, "universal_checkpoint_info", None)
    if callable(info):
        info = info()
    return dict(info) if info else {}


def global_universal_checkpoint_info(module: torch.nn.Module) -> dict:
    """The union over every rank (a collective). A pipeline stage declares only the parameters it holds, but
    ds_to_universal reads the declaration of one file (mp_rank_00, the first stage) for all of them: without
    the union the last stage's final norm would be merged as if it were column-parallel."""
    merged: dict = {}
    for info in comm.all_gather_object(universal_checkpoint_info(module)):
        for key, value in info.items():
            if isinstance(value, list):
                merged.setdefault(key, [])
                merged[key].extend(pattern for pattern in value if pattern not in merged[key])
            else:
                merged.setdefault(key, value)
    return merged
