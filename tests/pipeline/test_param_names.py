"""One checkpoint layout: every GPTModel parameter name maps to one name in each pipeline form and back."""

import pytest

from megatron.pipeline.param_names import (
    model_to_pipeline_module_name,
    model_to_stage_chunks_name,
    pipeline_module_to_model_name,
    stage_chunks_to_model_name,
)

LAYERS = 8
LAYER_PARAMS = ("input_norm.weight", "self_attention.linear_qkv.weight", "mlp.linear_fc2.weight")
MODEL_NAMES = (["embedding.word_embeddings.weight", "embedding.position_embeddings.weight", "final_norm.weight",
                "output_layer.linear.weight"]
               + [f"layers.{i}.{p}" for i in range(LAYERS) for p in LAYER_PARAMS])


@pytest.mark.parametrize("tied", [True, False])
def test_pipeline_module_names_round_trip(tied):
    names = [n for n in MODEL_NAMES if not (tied and n.startswith("output_layer"))]
    pipe_names = [model_to_pipeline_module_name(n, LAYERS, tied) for n in names]
    assert len(set(pipe_names)) == len(names)
    assert [pipeline_module_to_model_name(n, LAYERS) for n in pipe_names] == names
    assert model_to_pipeline_module_name("layers.2.mlp.linear_fc2.weight", LAYERS, tied) == "3.mlp.linear_fc2.weight"
    assert model_to_pipeline_module_name("final_norm.weight", LAYERS, tied) == f"{LAYERS + 1}.final_norm.weight"
    embedding = model_to_pipeline_module_name("embedding.word_embeddings.weight", LAYERS, tied)
    assert embedding == ("tied_modules.embedding.word_embeddings.weight" if tied else "0.word_embeddings.weight")


@pytest.mark.parametrize("pipeline_size, num_chunks", [(2, 1), (4, 1), (2, 2), (2, 4), (4, 2)])
def test_stage_chunk_names_cover_the_model_once(pipeline_size, num_chunks):
    per_chunk = LAYERS // (pipeline_size * num_chunks)
    owners = {}
    for rank in range(pipeline_size):
        for name in MODEL_NAMES:
            local = model_to_stage_chunks_name(name, pipeline_rank=rank, pipeline_size=pipeline_size,
                                               num_chunks=num_chunks, layers_per_chunk=per_chunk)
            if local is None:
                continue
            assert name not in owners, f"{name} on ranks {owners[name]} and {rank}"
            owners[name] = rank
            assert stage_chunks_to_model_name(local, pipeline_rank=rank, pipeline_size=pipeline_size,
                                              layers_per_chunk=per_chunk) == name
    assert set(owners) == set(MODEL_NAMES)
    # Interleaving: virtual stage s = chunk * PP + rank holds layers [s * n, (s + 1) * n).
    assert owners["layers.0.input_norm.weight"] == 0 and owners["embedding.word_embeddings.weight"] == 0
    assert owners[f"layers.{LAYERS - 1}.input_norm.weight"] == pipeline_size - 1
    assert owners["final_norm.weight"] == pipeline_size - 1


def test_names_outside_the_model_are_errors():
    with pytest.raises(ValueError, match="not part of a 8-layer"):
        pipeline_module_to_model_name("12.final_norm.weight", LAYERS)
    with pytest.raises(ValueError, match="does not exist"):
        model_to_pipeline_module_name("layers.8.mlp.linear_fc2.weight", LAYERS, True)
