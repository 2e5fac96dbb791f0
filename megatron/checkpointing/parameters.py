"""The model's parameters as the checkpoint sees them: full (unsharded) shapes and declared sharding.

Every rank contributes the parameters it holds (pipeline stages hold different ones, TP ranks hold slices);
the union over the world describes the whole model independently of the layout, which is what lets a
checkpoint be checked against a model built with another TP/PP/DP/ZeRO.
"""

from typing import Dict

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


def local_parameter_table(module: torch.nn.Module) -> Dict[str, dict]:
    return {name: describe_parameter(param) for name, param in module.named_parameters()}


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
