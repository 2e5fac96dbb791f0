"""universal_checkpoint_info: every parameter falls in exactly the category its sharding needs, and
DeepSpeed's ds_to_universal, driven by it, turns a TP=2 checkpoint into the full TP-independent tensors."""

import os
import re
import shutil
import sys
import tempfile

import pytest
import torch
from deepspeed.checkpoint import constants as ds

from tests.distributed import distributed_test
from tests.model.twins import VOCAB, assert_close, build_model, tiny_config

CATEGORIES = (ds.TP_REPLICATED_PARAMETER_PATTERNS, ds.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS,
              ds.VOCABULARY_PARAMETER_PATTERNS)


def expected_category(name):
    """Written by hand from the architecture, independently of the declared sharding."""
    if name.endswith(("norm.weight", "norm.bias", "linear_proj.bias", "linear_fc2.bias")) or \
            name == "embedding.position_embeddings.weight":
        return ds.TP_REPLICATED_PARAMETER_PATTERNS
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return ds.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS
    if name in ("embedding.word_embeddings.weight", "output_layer.linear.weight"):
        return ds.VOCABULARY_PARAMETER_PATTERNS
    assert re.search(r"linear_(qkv|fc1)\.(weight|bias)$", name), name
    return None   # column-parallel: DeepSpeed's default concatenation along dim 0


@pytest.mark.parametrize("family", ["gpt", "llama"])
@distributed_test(world_size=2)
def test_every_parameter_is_classified(family):
    model = build_model(tiny_config(family), 2)
    info = model.universal_checkpoint_info
    assert info[ds.ORIGINAL_VOCAB_SIZE] == VOCAB
    used = set()
    for name, _ in model.named_parameters():
        matched = {category for category in CATEGORIES for pattern in info[category] if re.match(pattern, name)}
        expected = expected_category(name)
        assert matched == ({expected} if expected else set()), f"{name}: matched {matched}, expected {expected}"
        for category in CATEGORIES:
            hits = [pattern for pattern in info[category] if re.match(pattern, name)]
            assert len(hits) <= 1, f"{name} matches several patterns of {category}: {hits}"  # DeepSpeed asserts
            used.update(hits)
    assert used == {pattern for category in CATEGORIES for pattern in info[category]}, "unused patterns"


def _gathered_full_tensor(param):
    """The TP=1 view of this rank's parameter: shards concatenated along their partition dim."""
    from megatron.core import comm
    from megatron.core import parallel_state as ps

    if not getattr(param, "tensor_model_parallel", False):
        return param.detach()
    shard = param.detach().movedim(param.partition_dim, 0).contiguous()     # partition dim first
    full = torch.empty((ps.get_tensor_model_parallel_world_size() * shard.size(0),) + tuple(shard.shape[1:]))
    comm.all_gather_into_tensor(full, shard, group=ps.get_tensor_model_parallel_group())
    return full.movedim(0, param.partition_dim)


@distributed_test(world_size=2)
def test_ds_to_universal_merges_a_tp2_checkpoint():
    import deepspeed
    from deepspeed.checkpoint import ds_to_universal

    from megatron.core import comm
    from megatron.core import parallel_state as ps

    model = build_model(tiny_config("llama"), 2)
    engine, *_ = deepspeed.initialize(model=model, mpu=ps.get_deepspeed_mpu(), config={
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3}}, "zero_optimization": {"stage": 1}})
    tokens = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(3))
    engine.backward(engine(tokens, labels=tokens).mean())
    engine.step()

    folder = comm.broadcast_object(tempfile.mkdtemp(prefix="uc_test_") if comm.get_rank() == 0 else None, src=0)
    engine.save_checkpoint(folder, tag="step1")
    expected = {name: _gathered_full_tensor(param) for name, param in engine.module.named_parameters()}
    comm.barrier()
    if comm.get_rank() == 0:
        universal = os.path.join(folder, "universal")
        argv = ["ds_to_universal", "--input_folder", os.path.join(folder, "step1"), "--output_folder",
                universal, "--num_extract_workers", "1", "--num_merge_workers", "1"]
        saved_argv, sys.argv = sys.argv, argv
        try:
            ds_to_universal.main(ds_to_universal.parse_arguments())
        finally:
            sys.argv = saved_argv
        for name, full in expected.items():
            if name in ("embedding.word_embeddings.weight", "output_layer.linear.weight"):
                full = full[:VOCAB]    # the padding rows are stripped
            merged = torch.load(os.path.join(universal, "zero", name, "fp32.pt"), weights_only=False)["param"]
            assert_close(merged, full, f"universal {name}", atol=0.0)
        shutil.rmtree(folder)
    comm.barrier()
