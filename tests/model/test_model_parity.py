"""GPT and Llama at TP=2 and TP=4, with and without sequence parallelism, against their TP=1 twins.

fp32, same seed, same batch: the loss and every parameter gradient (shard by shard) agree to 1e-5.
Llama runs grouped-query attention (8 query heads, 2 key/value groups at TP=2; 4 groups at TP=4).
"""

import pytest

from tests.distributed import distributed_test
from tests.model.twins import run_parity


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
