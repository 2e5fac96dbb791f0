"""The model a run trains, and what one iteration of it costs in FLOPs."""

from megatron.config import RunConfig
from megatron.model import GPTModel, model_flops_per_token


def build_model(config: RunConfig):
    """GPT or Llama (by the model flags) on this rank's tensor-parallel shards, fp32 master weights.

    DeepSpeed casts to bf16/fp16 itself when the JSON enables them and keeps fp32 masters in the optimizer.
    """
    return GPTModel(config.model, sequence_parallel=config.parallel.sequence_parallel,
                    recompute_granularity=config.recompute.recompute_granularity,
                    partition_activations=config.recompute.partition_activations,
                    init_seed=config.training.seed, moe_config=config.moe)


def flops_per_iteration(config: RunConfig, global_batch_size: int) -> float:
    """Model FLOPs of one optimizer step (forward + backward; recomputation is not useful work, so MFU
    does not count it)."""
    return model_flops_per_token(config.model) * config.model.seq_length * global_batch_size
