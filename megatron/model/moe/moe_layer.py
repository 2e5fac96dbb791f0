"""MoELayer: router -> dispatcher -> this rank's experts -> combine, plus an optional shared expert.

Input/output [s, b, h] (this TP rank's [s/tp, b, h] under sequence parallelism: each TP rank routes its own
tokens, experts are replicated over TP). Aux and z losses of the last forward stay on the layer
(:func:`collect_aux_losses`) and are added to the training loss by the loop; the expert load of the last
forward likewise (:func:`collect_expert_load`).

The class derives from DeepSpeed's ``MoE`` only so that DeepSpeed's engine recognises an MoE model (its
detection is an ``isinstance`` test) and builds ZeRO's expert parameter groups; nothing of DeepSpeed's MoE
is used: ``set_deepspeed_parallelism`` registers OUR expert groups (megatron/core/parallel_state.py) under
DeepSpeed's group name instead of letting DeepSpeed create its own.
"""

import dataclasses
from typing import Dict, List, Optional

import torch
from deepspeed.moe.layer import MoE as _DeepSpeedMoEMarker
from torch import nn

from megatron.core import parallel_state as ps
from megatron.model.mlp import MLP
from megatron.model.moe.dispatcher import DISPATCHERS
from megatron.model.moe.experts import LocalExperts, expert_group_name
from megatron.model.moe.router import Router


class MoELayer(_DeepSpeedMoEMarker):
    def __init__(self, config, moe, *, sequence_parallel: bool = False, params_dtype: torch.dtype = torch.float32,
                 index_in_model: Optional[int] = None):
        nn.Module.__init__(self)  # DeepSpeed's MoE.__init__ would build its own gate and experts
        self.index_in_model = index_in_model  # among the whole model's MoE layers (names the load figures)
        self.num_experts = moe.experts
        self.ep_size = ps.get_expert_model_parallel_world_size()
        self.num_local_experts = self.num_experts // self.ep_size
        self.expert_group_name = expert_group_name(self.ep_size)
        self.sequence_parallel = sequence_parallel and ps.get_tensor_model_parallel_world_size() > 1
        ffn = moe.moe_ffn_hidden_size or config.ffn_hidden_size
        self.router = Router(config.hidden_size, moe, config.init_method_std, sequence_parallel=self.sequence_parallel,
                             params_dtype=params_dtype)
        first = ps.get_expert_model_parallel_rank() * self.num_local_experts
        # DeepSpeed's module path (deepspeed_moe.experts.deepspeed_experts.<local id>): its engine checkpoints
        # experts one file per global id by matching that path.
        self.deepspeed_moe = nn.Module()
        self.deepspeed_moe.experts = LocalExperts(config, ffn, first, self.num_local_experts,
                                                  expert_parallel_size=self.ep_size,
                                                  sequence_parallel=self.sequence_parallel, dtype=params_dtype)
        # Not "shared_expert": DeepSpeed treats every key containing "expert" in an MoE module as a routed expert.
        self.shared_mlp = None
        if moe.moe_shared_expert_intermediate_size:
            shared = dataclasses.replace(config, ffn_hidden_size=moe.moe_shared_expert_intermediate_size)
            self.shared_mlp = MLP(shared, sequence_parallel=self.sequence_parallel, params_dtype=params_dtype)
        self.dispatcher = DISPATCHERS[moe.moe_token_dispatcher_type](
            self.num_experts, ps.get_expert_model_parallel_group() if self.ep_size > 1 else None,
            moe.moe_pad_expert_input_to_capacity)
        self.aux_loss: Optional[torch.Tensor] = None
        self.z_loss: Optional[torch.Tensor] = None
        self.tokens_per_expert: Optional[torch.Tensor] = None   # [E] kept slots of this rank's tokens
        self.dropped_tokens: Optional[torch.Tensor] = None      # [E] dropped slots

    @property
    def experts(self) -> LocalExperts:
        return self.deepspeed_moe.experts

    def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False):
        """Called by DeepSpeed's engine: hand it our expert groups instead of creating new ones."""
        from deepspeed.utils import groups

        name = self.expert_group_name
        groups._EXPERT_PARALLEL_GROUP[name] = ps.get_expert_model_parallel_group()
        groups._EXPERT_PARALLEL_GROUP_RANKS[name] = ps.get_expert_model_parallel_ranks()
        groups._EXPERT_DATA_PARALLEL_GROUP[name] = ps.get_expert_data_parallel_group()
        groups._EXPERT_DATA_PARALLEL_GROUP_RANKS[name] = ps.get_expert_data_parallel_ranks()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        seq, batch, hidden = hidden_states.shape
        tokens = hidden_states.reshape(seq * batch, hidden)
        loss_group = ps.get_tensor_model_parallel_group() if self.sequence_parallel else None
        routing = self.router(tokens, batch, loss_group)
        self.aux_loss, self.z_loss = routing.aux_loss, routing.z_loss
        with torch.no_grad():
            slots = torch.bincount(routing.experts.reshape(-1), minlength=self.num_experts)
            self.tokens_per_expert = torch.bincount(routing.experts[routing.kept], minlength=self.num_experts)
            self.dropped_tokens = slots - self.tokens_per_expert
        output = self.dispatcher(tokens, routing, self.experts, self.router.capacity(tokens.shape[0]))
        output = output.view(seq, batch, hidden)
        if self.shared_mlp is not None:
            output = output + self.shared_mlp(hidden_states)
        return output


def moe_layers(module: nn.Module) -> List[MoELayer]:
    return [m for m in module.modules() if isinstance(m, MoELayer)]


def collect_aux_losses(module: nn.Module) -> Optional[torch.Tensor]:
    """Sum of the aux + z losses of every MoE layer's last forward (None for a dense model)."""
    losses = [loss for layer in moe_layers(module) for loss in (layer.aux_loss, layer.z_loss) if loss is not None]
    return torch.stack(losses).sum() if losses else None


def collect_expert_load(module: nn.Module) -> Dict[str, List[int]]:
    """{"moe<i>.tokens_per_expert": [...], "moe<i>.dropped": n} of the last forward on this rank; i counts the
    whole model's MoE layers (a pipeline stage's layers keep their model-wide numbers)."""
    load = {}
    for position, layer in enumerate(moe_layers(module)):
        index = position if layer.index_in_model is None else layer.index_in_model
        if layer.tokens_per_expert is not None:
            load[f"moe{index}.tokens_per_expert"] = layer.tokens_per_expert.tolist()
            load[f"moe{index}.dropped"] = int(layer.dropped_tokens.sum())
    return load


def update_expert_biases(module: nn.Module) -> None:
    """After an optimizer step: move every MoE layer's router expert bias by the load of the whole batch
    (summed over data x context parallelism, which holds expert parallelism, and over TP under sequence
    parallelism)."""
    for layer in moe_layers(module):
        if layer.router.score_bias is not None:
            groups = [ps.get_data_parallel_group(with_context_parallel=True)]  # CP ranks hold other tokens
            if layer.sequence_parallel:
                groups.append(ps.get_tensor_model_parallel_group())
            layer.router.update_expert_bias(groups)
