"""Hugging Face ``MixtralForCausalLM`` conversion against the real ``transformers`` (random tiny config, fp32).

- a transformers-initialised Mixtral (every tensor perturbed) -> our checkpoint (tools/checkpoint/
  convert_from_hf.py) -> loaded into a GPTModel engine with MoE layers: logits equal transformers' within 1e-4;
- that checkpoint -> HF (tools/checkpoint/convert_to_hf.py) -> ``from_pretrained``: every tensor is exactly
  the original; ours -> HF -> ours preserves every tensor exactly;
- a model initialised by us (Mixtral family, top-2 of 4 experts) exported: transformers' logits equal ours;
- MoE configurations Mixtral cannot express (sigmoid or pre-softmax router, capacity, shared expert,
  router expert bias) refused.
"""

import pytest
import torch

from tests.checkpointing.test_hf_conversion import LOGITS_ATOL, SEQ, VOCAB, _hf_logits, _tokens, tool
from tests.distributed import run_on_ranks
from tests.moe.test_moe_config import BASE, parse_config


def _random_mixtral(folder):
    from transformers import AutoModelForCausalLM, MixtralConfig

    config = MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                           num_local_experts=4, num_experts_per_tok=2, rope_theta=5000.0, rms_norm_eps=1e-6,
                           tie_word_embeddings=False)
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape) * 0.05)
    model.save_pretrained(folder)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _moe_engine(run_config):
    import deepspeed

    from megatron.core import parallel_state as ps
    from megatron.model import GPTModel

    ps.initialize_model_parallel(1)
    model = GPTModel(run_config.model.with_vocab(run_config.model.vocab_size, 1), moe_config=run_config.moe)
    engine, _, _, _ = deepspeed.initialize(model=model, config={
        "train_micro_batch_size_per_gpu": 1, "train_batch_size": 1, "zero_optimization": {"stage": 0},
        "steps_per_print": 10 ** 9}, mpu=ps.get_deepspeed_mpu())
    return engine


def _logits(engine):
    engine.eval()
    with torch.no_grad():
        return engine(_tokens())[..., :VOCAB]


def _import_and_export(hf_dir, save_dir, export_dir):
    from megatron.checkpointing import load_checkpoint
    from megatron.checkpointing.consolidate import consolidated_weights
    from megatron.checkpointing.hf import mixtral
    from megatron.checkpointing.hf.export import stored_run_config

    tool("convert_from_hf").main(["--hf", hf_dir, "--save", save_dir, "--make-vocab-size-divisible-by", "64"])
    weights, manifest = consolidated_weights(save_dir, log=lambda _: None)
    run_config = stored_run_config(manifest, save_dir)
    assert run_config.moe.experts == 4 and run_config.moe.moe_router_topk == 2
    engine = _moe_engine(run_config)
    load_checkpoint(engine, save_dir, finetune=True, log=lambda _: None)
    ours = _logits(engine)
    engine.destroy()
    round_trip = mixtral.from_hf(mixtral.to_hf(weights, run_config.model), run_config.model)
    assert round_trip.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(round_trip[name], tensor), f"ours -> HF -> ours changed {name}"
    tool("convert_to_hf").main(["--checkpoint", save_dir, "--output", export_dir])
    return ours


def test_mixtral_import_export_round_trip(tmp_path):
    hf_dir, save_dir, export_dir = (str(tmp_path / name) for name in ("hf", "ckpt", "exported"))
    original = _random_mixtral(hf_dir)
    original_logits, _ = _hf_logits(hf_dir)
    ours = run_on_ranks(1, _import_and_export, hf_dir=hf_dir, save_dir=save_dir, export_dir=export_dir)[0]
    error = (ours - original_logits).abs().max().item()
    assert error <= LOGITS_ATOL, f"our Mixtral logits differ from transformers' by {error:.2e}"
    exported_logits, exported = _hf_logits(export_dir)
    assert exported.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), f"HF -> ours -> HF changed {name}"
    torch.testing.assert_close(exported_logits, original_logits, rtol=0, atol=1e-6)


def _export_ours(export_dir):
    """Our own initialisation (not transformers'), exported from the engine's weights."""
    from safetensors.torch import save_file

    from megatron.checkpointing.hf.export import hf_state_and_config

    run_config = parse_config(BASE + ["--model-family", "mixtral", "--num-experts", "4", "--ffn-hidden-size", "24",
                                      "--vocab-size", str(VOCAB), "--tokenizer-type", "NullTokenizer"],
                              world_size=1)
    engine = _moe_engine(run_config)
    ours = _logits(engine)
    weights = {name: tensor.detach().clone() for name, tensor in engine.module.state_dict().items()}
    weights["embedding.word_embeddings.weight"] = weights["embedding.word_embeddings.weight"][:VOCAB]
    weights["output_layer.linear.weight"] = weights["output_layer.linear.weight"][:VOCAB]
    engine.destroy()
    state, config = hf_state_and_config(weights, run_config)
    config.save_pretrained(export_dir)
    save_file(state, f"{export_dir}/model.safetensors", metadata={"format": "pt"})
    return ours


def test_our_mixtral_family_run_exports_to_transformers(tmp_path):
    ours = run_on_ranks(1, _export_ours, export_dir=str(tmp_path))[0]
    theirs, _ = _hf_logits(str(tmp_path))
    error = (ours - theirs).abs().max().item()
    assert error <= LOGITS_ATOL, f"transformers' logits of our exported Mixtral differ by {error:.2e}"


@pytest.mark.parametrize("flags, cause", [
    (["--moe-router-score-function", "sigmoid"], "sigmoid or pre-softmax router"),
    (["--moe-router-pre-softmax"], "sigmoid or pre-softmax router"),
    (["--moe-expert-capacity-factor", "1.0"], "capacity factor"),
    (["--moe-shared-expert-intermediate-size", "16"], "shared expert"),
    (["--moe-router-enable-expert-bias"], "router expert bias"),
])
def test_mixtral_export_refuses_what_huggingface_cannot_express(flags, cause):
    from megatron.checkpointing.hf.export import hf_state_and_config
    from megatron.checkpointing.safe_load import CheckpointError

    config = parse_config(BASE + ["--model-family", "mixtral", "--ffn-hidden-size", "128"] + flags, world_size=1)
    with pytest.raises(CheckpointError, match=f"does not fit Hugging Face MixtralForCausalLM: .*{cause}"):
        hf_state_and_config({"embedding.word_embeddings.weight": torch.zeros(VOCAB, 8)}, config)


def _train_and_save(values):
    from megatron.config import resolve_config
    from megatron.core import comm
    from megatron.training.pretrain import pretrain

    config = resolve_config(values, deepspeed_config={"zero_optimization": {"stage": 1}},
                            world_size=comm.get_world_size())
    pretrain(config, printer=lambda message: None)


def _expert_parallel_logits(save_dir):
    """The saved EP=2 run's logits, computed at EP=2 by our model (independent of the HF mapping)."""
    import deepspeed

    from megatron.checkpointing import load_checkpoint
    from megatron.checkpointing.consolidate import resolve_checkpoint_folder
    from megatron.checkpointing.hf.export import stored_run_config
    from megatron.checkpointing.manifest import read_manifest
    from megatron.core import parallel_state as ps
    from megatron.model import GPTModel

    run_config = stored_run_config(read_manifest(resolve_checkpoint_folder(save_dir)), save_dir)
    ps.initialize_model_parallel(1, expert_model_parallel_size=2)
    model = GPTModel(run_config.model, moe_config=run_config.moe)
    engine, _, _, _ = deepspeed.initialize(model=model, config={
        "train_micro_batch_size_per_gpu": 1, "train_batch_size": 2, "zero_optimization": {"stage": 0},
        "steps_per_print": 10 ** 9}, mpu=ps.get_deepspeed_mpu())
    load_checkpoint(engine, save_dir, finetune=True, log=lambda _: None)
    logits = _logits(engine)
    engine.destroy()
    return logits


def test_trained_expert_parallel_mixtral_run_exports_to_transformers(synthetic_corpus, tmp_path):
    """A Mixtral-family run trained 3 steps at EP=2 x ZeRO-1 (aux loss on), saved, exported from its files."""
    from tests.moe.test_moe_training import _moe_values

    save_dir, export_dir = str(tmp_path / "ckpt"), str(tmp_path / "exported")
    values = _moe_values("mixtral", synthetic_corpus, expert_model_parallel_size=2, train_iters=3, save=save_dir,
                         eval_interval=100)
    run_on_ranks(2, _train_and_save, values=values)
    ours = run_on_ranks(2, _expert_parallel_logits, save_dir=save_dir)
    torch.testing.assert_close(ours[0], ours[1], rtol=0, atol=0)
    tool("convert_to_hf").main(["--checkpoint", save_dir, "--output", export_dir])
    theirs, _ = _hf_logits(export_dir)
    error = (ours[0] - theirs[..., :VOCAB]).abs().max().item()
    assert error <= LOGITS_ATOL, f"transformers' logits of the exported EP=2 run differ from ours by {error:.2e}"
