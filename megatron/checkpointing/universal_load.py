"""Loading a universal checkpoint into an engine of any layout, parameter by parameter.

DeepSpeed's own universal loader serves ZeRO-1/2 engines. It fails for ZeRO-3 at a different TP size (it
treats the whole tensor as this rank's TP slice: ``start + length exceeds dimension size``) and does not
exist for ZeRO-0, so those go through here: each parameter's full tensor is cut to this rank's TP slice by
the sharding the parameter declares, then written into

- the ZeRO-3 partitions: the low-precision partition through ``GatheredParameters(modifier_rank=0)``, the fp32
  master and Adam moments through DeepSpeed's ``safe_set_full_fp32_param`` / ``safe_set_full_optimizer_state``;
- ZeRO-1/2 flat partitions through the same ``safe_set_full_*`` calls (fragment mappings);
- a plain ZeRO-0 parameter and its torch optimizer state directly.

The model's fused QKV and SwiGLU layouts are TP-independent under dim-0 concatenation (megatron/model/
checkpoint_info.py), so one chunk per TP rank along ``partition_dim`` is the whole slicing rule.
"""

import os
from typing import Callable, Optional

import deepspeed
import torch
from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

from megatron.checkpointing.optimizer_state import ensure_adam_state
from megatron.checkpointing.safe_load import CheckpointError, safe_torch_load
from megatron.checkpointing.parameters import local_shape
from megatron.checkpointing.universal import universal_step
from megatron.core import parallel_state as ps

ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def tensor_parallel_slice(full: torch.Tensor, param: torch.Tensor, name: str, source: str) -> torch.Tensor:
    """This rank's TP slice of a whole tensor, for a parameter declared column/row/vocab/replicated."""
    shape = local_shape(param)
    if not getattr(param, "tensor_model_parallel", False):
        sliced = full
    else:
        world, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
        dim = param.partition_dim
        if getattr(param, "sharding", None) == "vocab":
            # Universal tensors hold the unpadded vocabulary; pad (or trim) to this run's padded size.
            rows = shape[dim] * world
            if full.shape[dim] < rows:
                padding = list(full.shape)
                padding[dim] = rows - full.shape[dim]
                full = torch.cat([full, full.new_zeros(padding)], dim=dim)
            full = full.narrow(dim, 0, rows)
        if full.shape[dim] % world != 0:
            raise CheckpointError(f"{source}: {name} has {full.shape[dim]} entries along dim {dim}, not divisible "
                                  f"by TP={world}")
        sliced = full.chunk(world, dim=dim)[rank]
    if tuple(sliced.shape) != tuple(shape):
        raise CheckpointError(f"{source}: {name} is {tuple(full.shape)} in the checkpoint, which does not give "
                              f"this rank's {tuple(shape)} at TP={ps.get_tensor_model_parallel_world_size()}")
    return sliced.contiguous()


def _load_whole(folder: str, name: str, key: str) -> torch.Tensor:
    path = os.path.join(folder, "zero", name, f"{key}.pt")
    if not os.path.isfile(path):
        hint = "resume with --no-load-optim to take the weights only" if key != "fp32" else \
            "the checkpoint holds no such parameter"
        raise CheckpointError(f"universal checkpoint {folder} has no {key} for {name} ({path}); {hint}")
    stored = safe_torch_load(path)
    return (stored["param"] if isinstance(stored, dict) else stored).float()


def _write_zero3(param, values: dict):
    weight = values["fp32"]
    with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
        param.data.copy_(weight.to(param.dtype).view(param.shape))
    safe_set_full_fp32_param(param, weight)
    for key in ADAM_MOMENTS:
        if key in values:
            safe_set_full_optimizer_state(param, values[key], key)


def _write_fragments(param, values: dict):
    param.data.copy_(values["fp32"].to(param.dtype))
    safe_set_full_fp32_param(param, values["fp32"])
    for key in ADAM_MOMENTS:
        if key in values:
            safe_set_full_optimizer_state(param, values[key], key)


def _write_plain(param, values: dict, optimizer, step):
    param.data.copy_(values["fp32"].to(param.dtype))
    if optimizer is not None and "exp_avg" in values:
        optimizer.state[param] = {"step": torch.tensor(float(step)), "exp_avg": values["exp_avg"].clone(),
                                  "exp_avg_sq": values["exp_avg_sq"].clone()}


def _set_zero_step(engine, step):
    """ZeRO keeps one Adam state per flat partition; every one gets the checkpoint's step count."""
    base = getattr(engine.optimizer, "optimizer", None)
    if base is None or step is None:
        return
    for state in base.state.values():
        if "step" in state:
            state["step"] = torch.as_tensor(step, dtype=state["step"].dtype if torch.is_tensor(state["step"])
                                            else torch.float32).clone()


def load_universal_into_engine(engine, folder: str, *, load_optimizer: bool,
                               source_name: Optional[Callable[[str], str]] = None):
    """Set every parameter (and, if asked, its Adam state) of ``engine`` from universal ``folder``.

    ``source_name`` maps this model's parameter names to the checkpoint's, for a model of another form
    (a pipeline module loading a plain model's checkpoint, or the reverse).
    """
    zero_stage = engine.zero_optimization_stage()
    if load_optimizer and zero_stage > 0:
        ensure_adam_state(engine)
        # ZeRO-1/2 tie each parameter's optimizer-state fragments to the flat state after the first step; a
        # fresh engine must be tied now or safe_set_full_optimizer_state finds nothing to write into.
        link_fragments = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if callable(link_fragments):
            link_fragments()
    step = None
    for name, param in engine.module.named_parameters():
        stored_name = source_name(name) if source_name else name
        keys = ("fp32",) + (ADAM_MOMENTS if load_optimizer else ())
        values = {key: tensor_parallel_slice(_load_whole(folder, stored_name, key), param, stored_name, folder)
                  for key in keys}
        if load_optimizer and step is None:
            step = universal_step(folder, stored_name)
        if hasattr(param, "ds_id"):
            _write_zero3(param, values)
        elif hasattr(param, "_hp_mapping"):
            _write_fragments(param, values)
        else:
            _write_plain(param, values, engine.optimizer if load_optimizer and zero_stage == 0 else None, step)
    if load_optimizer and zero_stage > 0:
        _set_zero_step(engine, step)
    if zero_stage in (1, 2) and hasattr(engine.optimizer, "update_lp_params"):
        engine.optimizer.update_lp_params()
