"""One pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)), dropout on each branch.

The unit both model forms are made of: GPTModel keeps a ModuleList of these, and the pipeline form
(DeepSpeed PipelineModule) builds the same class from LayerSpecs, so one layer's parameter names and
state_dict keys are the same in both.
"""

from typing import Optional

import torch
from torch import nn

from megatron.model.attention import SelfAttention
from megatron.model.config_checks import effective_sequence_parallel
from megatron.model.dropout import tensor_parallel_dropout
from megatron.model.mlp import MLP
from megatron.model.norms import build_norm


class TransformerLayer(nn.Module):
    """forward(hidden [s, b, h] ([s/tp, b, h] under sequence parallelism), position_ids [b, s] | None,
    attention_mask bool [b, 1, s, s] | None) -> hidden of the same shape.

    Args:
        recompute_core_attention: selective recomputation of the attention core (see recompute.py).
        moe / layer_number: a MoEConfig and this layer's index in the whole model; MoE layers (every
            --moe-layer-freq-th) get a megatron.model.moe.MoELayer as their ``mlp``.
            Full-layer recomputation is applied around the layer by its owner (GPTModel, or the pipeline
            engine's own activation checkpointing).
    """

    def __init__(self, config, *, sequence_parallel: bool = False, recompute_core_attention: bool = False,
                 params_dtype: torch.dtype = torch.float32, moe=None, layer_number: int = 0):
        super().__init__()
        sequence_parallel = effective_sequence_parallel(sequence_parallel)
        self.sequence_parallel = sequence_parallel
        self.hidden_dropout = config.hidden_dropout
        self.input_norm = build_norm(config, sequence_parallel=sequence_parallel, params_dtype=params_dtype)
        self.self_attention = SelfAttention(config, sequence_parallel=sequence_parallel,
                                            recompute_core_attention=recompute_core_attention,
                                            params_dtype=params_dtype)
        self.post_attention_norm = build_norm(config, sequence_parallel=sequence_parallel,
                                              params_dtype=params_dtype)
        if moe is not None and moe.is_moe_layer(layer_number):
            # The MoE layer takes the MLP's place (and name), as in Megatron-LM.
            from megatron.model.moe import MoELayer

            self.mlp = MoELayer(config, moe, sequence_parallel=sequence_parallel, params_dtype=params_dtype)
        else:
            self.mlp = MLP(config, sequence_parallel=sequence_parallel, params_dtype=params_dtype)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        # The residual stream is replicated across TP ranks unless sequence parallelism splits it.
        return tensor_parallel_dropout(x, self.hidden_dropout, self.training,
                                       sharded_across_tp=self.sequence_parallel)

    def forward(self, hidden_states: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, kv_cache=None) -> torch.Tensor:
        attention_output = self.self_attention(self.input_norm(hidden_states), position_ids, attention_mask,
                                               kv_cache=kv_cache)
        hidden_states = hidden_states + self._dropout(attention_output)
        mlp_output = self.mlp(self.post_attention_norm(hidden_states))
        return hidden_states + self._dropout(mlp_output)
