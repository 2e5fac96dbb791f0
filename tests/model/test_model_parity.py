"""GPT and Llama at TP=2 and TP=4, with and without sequence parallelism, against their TP=1 twins.

fp32, same seed, same batch: the loss and every parameter gradient (shard by shard) agree to 1e-5.
Llama runs grouped-query attention (8 query heads, 2 key/value groups at TP=2; 4 groups at TP=4).
bf16 parameters are checked against fp32 at bf16's tolerance.
"""

import pytest
import torch

from tests.distributed import distributed_test
from tests.model.twins import build_model, loss_and_grads, make_batch, run_parity, tiny_config


@pytest.mark.parametrize("sequence_parallel", [False, True])
@pytest.mark.parametrize("family", ["gpt", "llama"])
@distributed_test(world_size=2)
def test_tp2_matches_serial(family, sequence_parallel):
    run_parity(family, 2, sequence_parallel=sequence_parallel)


@pytest.mark.parametrize("sequence_parallel", [False, True])
@distributed_test(world_size=4)
def test_llama_tp4_matches_serial(sequence_parallel):
    run_parity("llama", 4, config_overrides={"num_key_value_heads": 4}, sequence_parallel=sequence_parallel)


@distributed_test(world_size=4)
def test_gpt_tp4_matches_serial():
    run_parity("gpt", 4, sequence_parallel=True)


@pytest.mark.parametrize("family", ["gpt", "llama"])
@distributed_test(world_size=2)
def test_bf16_params_track_the_fp32_model(family):
    """params_dtype=bf16 (for runs without fp32 masters): every parameter and gradient is bf16 and the loss
    stays within bf16 rounding of the fp32 twin's."""
    config, batch = tiny_config(family), make_batch()
    bf16 = build_model(config, 2, params_dtype=torch.bfloat16, sequence_parallel=True)
    loss, grads = loss_and_grads(bf16, batch)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert all(g.dtype == torch.bfloat16 for g in grads.values())
    fp32_loss, _ = loss_and_grads(build_model(config, 2, sequence_parallel=True), batch)
    assert abs(loss.float().item() - fp32_loss.item()) < 2e-2 * fp32_loss.item()
