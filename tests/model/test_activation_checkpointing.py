"""Recomputation through deepspeed.checkpointing changes nothing: with dropout ON (attention and hidden),
full and selective recomputation give the same loss and gradients as keeping every activation, at TP=2.

Equal numbers with dropout on prove that recomputation redraws the same masks: both the default generator
(replicated dropout) and the tracked per-TP-rank generator (attention probabilities, sequence-parallel
dropout) are restored. Each test also checks that dropout really is active (the eval-mode loss differs).
"""

import contextlib

import deepspeed
import pytest
import torch

from tests.distributed import distributed_test
from tests.model.twins import assert_close, build_model, loss_and_grads, make_batch, tiny_config


@contextlib.contextmanager
def count_recomputed_runs(model, recompute_granularity):
    """Count the runs of the layers' forward ("full") or of the attention core ("selective")."""
    from megatron.model import attention

    runs = [0]

    def count(*_):
        runs[0] += 1

    if recompute_granularity == "full":
        handles = [layer.register_forward_hook(count) for layer in model.layers]
        try:
            yield runs
        finally:
            for handle in handles:
                handle.remove()
        return
    original_core = attention.core_attention

    def counting_core(*args):
        count()
        return original_core(*args)

    attention.core_attention = counting_core
    try:
        yield runs
    finally:
        attention.core_attention = original_core


DROPOUT = dict(attention_dropout=0.2, hidden_dropout=0.2)
SEED = 99


def _compare_with_no_recompute(family, *, partition_activations=False, checkpoint_in_cpu=False, **model_kwargs):
    from megatron.core import parallel_state as ps

    tp = 2
    config = tiny_config(family, **DROPOUT)
    batch = make_batch()
    sequence_parallel = model_kwargs.get("sequence_parallel", False)

    reference = build_model(config, tp, seed=SEED, sequence_parallel=sequence_parallel)
    reference_loss, reference_grads = loss_and_grads(reference, batch)

    recomputed = build_model(config, tp, seed=SEED, partition_activations=partition_activations, **model_kwargs)
    deepspeed.checkpointing.configure(ps.get_deepspeed_mpu(), partition_activations=partition_activations,
                                      checkpoint_in_cpu=checkpoint_in_cpu)
    with count_recomputed_runs(recomputed, model_kwargs["recompute_granularity"]) as runs:
        loss, grads = loss_and_grads(recomputed, batch)
    # Each layer (full) or attention core (selective) ran twice: forward, then recomputation in backward.
    assert runs[0] == 2 * config.num_layers, f"{runs[0]} runs of the recomputed blocks"

    assert_close(loss, reference_loss, "loss", atol=1e-6)
    for name in reference_grads:
        assert_close(grads[name], reference_grads[name], f"grad of {name}", atol=1e-6)

    recomputed.eval()
    with torch.no_grad():
        eval_loss = recomputed(batch["tokens"], labels=batch["labels"]).mean()
    assert (eval_loss - loss).abs() > 1e-3, "dropout had no effect; the test would prove nothing"


@pytest.mark.parametrize("granularity", ["full", "selective"])
@pytest.mark.parametrize("family", ["gpt", "llama"])
@distributed_test(world_size=2)
def test_recompute_matches_no_recompute_with_dropout(family, granularity):
    _compare_with_no_recompute(family, recompute_granularity=granularity)


@pytest.mark.parametrize("granularity", ["full", "selective"])
@distributed_test(world_size=2)
def test_recompute_with_sequence_parallel(granularity):
    _compare_with_no_recompute("llama", recompute_granularity=granularity, sequence_parallel=True)


@distributed_test(world_size=2)
def test_full_recompute_with_partitioned_activations():
    # The layer input is replicated across TP ranks without sequence parallelism: partitioning is exact.
    _compare_with_no_recompute("gpt", recompute_granularity="full", partition_activations=True)


@distributed_test(world_size=2)
def test_full_recompute_with_partitioned_checkpoints_in_cpu():
    _compare_with_no_recompute("llama", recompute_granularity="full", partition_activations=True,
                               checkpoint_in_cpu=True)


@distributed_test(world_size=2)
def test_checkpoints_in_cpu_without_partitioning_is_refused_on_cpu():
    # DeepSpeed would lose the saved inputs of CPU-resident activations; a clear error instead.
    from megatron.core import parallel_state as ps

    model = build_model(tiny_config("gpt"), 2, recompute_granularity="full")
    deepspeed.checkpointing.configure(ps.get_deepspeed_mpu(), checkpoint_in_cpu=True)
    with pytest.raises(ValueError, match="checkpoint_in_cpu"):
        model(make_batch()["tokens"])
