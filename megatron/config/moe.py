"""MoEConfig: Mixture-of-Experts layers (router, capacity, dispatcher, experts) under Megatron-LM's flag names.

Megatron-DeepSpeed's spellings are aliases where they mean the same thing (``--topk``, ``--moe-loss-coeff``,
``--moe-train-capacity-factor``, ``--expert-interval``, ...). The expert-parallel degree lives in
ParallelConfig (``--expert-model-parallel-size`` / ``--moe-expert-parallel-size``).
"""

from dataclasses import dataclass
from typing import Optional, Tuple

from megatron.config.fields import option


@dataclass(frozen=True)
class MoEConfig:
    """Mixture of Experts. Every field but num_experts only matters once --num-experts is set."""

    num_experts: Optional[Tuple[int, ...]] = option(
        None, "Experts per MoE layer; unset builds a dense model. One value for every MoE layer, or (as "
        "Megatron-DeepSpeed) one value per MoE layer; all values must be equal here.")
    moe_router_topk: int = option(2, "Experts each token is routed to.", aliases=("--topk",), minimum=1)
    moe_router_score_function: str = option("softmax", "Router scores: softmax or sigmoid (sigmoid weights "
                                            "are renormalised over the chosen experts).",
                                            choices=("softmax", "sigmoid"))
    moe_router_pre_softmax: bool = option(
        False, "Softmax over all experts before the top-k (Megatron's pre-softmax); the default applies it "
        "over the k chosen logits, as Mixtral does (both give the same top-k, different weights).")
    moe_router_enable_expert_bias: bool = option(
        False, "Aux-loss-free load balancing (DeepSeek-V3): a per-expert bias added to the scores for the top-k "
        "choice only (not to the combine weights), moved after every optimizer step by "
        "--moe-router-bias-update-rate * sign(mean load - expert load), the load counted over the whole "
        "data x expert parallel batch. Saved in checkpoints.")
    moe_router_bias_update_rate: float = option(1e-3, "Step of the expert bias update (--moe-router-enable-"
                                                "expert-bias).", minimum=0)
    moe_router_load_balancing_type: str = option(
        "aux_loss", "Load-balancing loss: aux_loss (Switch/GShard, over the micro-batch), seq_aux_loss (per "
        "sequence, averaged) or none.", choices=("aux_loss", "seq_aux_loss", "none"))
    moe_aux_loss_coeff: float = option(0.0, "Weight of the load-balancing loss in the training loss.",
                                       aliases=("--moe-loss-coeff",), minimum=0)
    moe_z_loss_coeff: float = option(0.0, "Weight of the router z-loss (mean squared logsumexp of the router "
                                     "logits).", minimum=0)
    moe_expert_capacity_factor: Optional[float] = option(
        None, "Capacity per expert = factor * tokens * topk / experts (rounded up); tokens beyond it are dropped "
        "(lowest router probability first). Unset: dropless. --disable-moe-token-dropping sets it unset.",
        aliases=("--moe-train-capacity-factor",), const_aliases={"--disable-moe-token-dropping": None},
        minimum=0)
    moe_eval_capacity_factor: Optional[float] = option(
        None, "Capacity factor in evaluation (Megatron-DeepSpeed).", minimum=0,
        derived="moe_expert_capacity_factor")
    moe_min_capacity: int = option(0, "Lower bound of the per-expert capacity (Megatron-DeepSpeed).", minimum=0)
    moe_pad_expert_input_to_capacity: bool = option(
        False, "With a capacity factor, pad every expert's input to its capacity (fixed shapes).")
    moe_token_dispatcher_type: str = option(
        "alltoall", "How tokens reach the experts of other expert-parallel ranks: alltoall (each rank sends "
        "only the tokens routed there) or allgather (every rank sees every token, then a reduce-scatter).",
        choices=("alltoall", "allgather"))
    moe_layer_freq: int = option(1, "Every N-th layer is an MoE layer (layers 0, N, 2N, ..., Megatron-LM's "
                                 "rule).", aliases=("--expert-interval",), minimum=1)
    moe_ffn_hidden_size: Optional[int] = option(None, "Hidden size of each expert's MLP.", minimum=1,
                                                derived="ffn_hidden_size")
    moe_shared_expert_intermediate_size: Optional[int] = option(
        None, "Hidden size of a shared expert every token goes through (Qwen-MoE / DeepSeek style); unset: "
        "no shared expert.", minimum=1)
    expert_tensor_parallel_size: int = option(
        1, "Tensor-parallel degree inside experts. Only 1 is built: with TP > 1 each expert is replicated over "
        "the TP ranks and, under sequence parallelism, every TP rank routes its own tokens.", minimum=1)
    create_moe_param_group: bool = option(
        True, "Expert parameters get their own optimizer groups (DeepSpeed's `moe` groups, reduced over the "
        "expert-data-parallel ranks). Always on: ZeRO cannot partition experts otherwise; the flag is "
        "accepted for Megatron-DeepSpeed scripts.")

    def __post_init__(self):
        if self.moe_eval_capacity_factor is None and self.moe_expert_capacity_factor is not None:
            object.__setattr__(self, "moe_eval_capacity_factor", self.moe_expert_capacity_factor)

    @property
    def enabled(self) -> bool:
        return self.num_experts is not None

    @property
    def experts(self) -> int:
        """The number of experts of every MoE layer (validate() checks the per-layer list is uniform)."""
        return self.num_experts[0]

    def is_moe_layer(self, layer_number: int) -> bool:
        """layer_number counts from 0 over the whole model."""
        return self.enabled and layer_number % self.moe_layer_freq == 0

    def moe_layer_index(self, layer_number: int) -> int:
        """Position of MoE layer ``layer_number`` among the model's MoE layers (the same on every pipeline
        stage, so per-layer expert load keeps one name whichever stage holds the layer)."""
        return sum(self.is_moe_layer(number) for number in range(layer_number))
