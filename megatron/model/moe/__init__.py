"""Mixture of Experts: router, token dispatchers over the expert-parallel group, experts, and the layer."""

from megatron.model.moe.moe_layer import MoELayer, collect_aux_losses, collect_expert_load

__all__ = ["MoELayer", "collect_aux_losses", "collect_expert_load"]
