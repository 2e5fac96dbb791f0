"""Importing Megatron-DeepSpeed and Megatron-LM checkpoints (tools/checkpoint/convert_from_megatron.py).

Each source is a random small Hugging Face model (GPT-2, Llama with GQA, Llama with biases), whose logits
``transformers`` computes; tests/checkpointing/megatron_files.py writes its weights as the Megatron project
would (file names, nesting, pickled arguments with enums and numpy states, TP shards, QKV row order, dtype).
The import is loaded into a fresh GPTModel engine; its logits must equal transformers' within 1e-4 (fp32
compute; bf16/fp16 sources are compared with the reference model rounded to that dtype). A wrong QKV-order
guess must move the logits far beyond that; a file that would run code is refused; training continues
from an import and resumes exactly.
"""

import argparse
import os

import pytest
import torch

from megatron.checkpointing.safe_load import MegatronEnumStandIn, safe_megatron_load
from tests.checkpointing import megatron_files
from tests.checkpointing.test_hf_conversion import _hf_config, _our_engine, tool
from tests.distributed import run_on_ranks

LOGITS_ATOL = 1e-4
SEQ = 16
CASES = {
    # family, writer, tp, pp, dtype, blocked QKV rows (Meg-DS after FPDT), pipeline files, tokenizer
    "megds_pipeline_gpt2_tp2_pp2_tokenizer_flags": ("gpt2", "megds", 2, 2, torch.float32, False, True, "flags"),
    "megds_pipeline_llama_gqa_tp2_pp2_bf16_tokenizer_carried": ("llama_gqa", "megds", 2, 2, torch.bfloat16, False,
                                                               True, "carried"),
    "megds_module_llama_fpdt_blocked_qkv_tp2_fp16": ("llama_bias_tied", "megds", 2, 1, torch.float16, True, False,
                                                     None),
    "megds_pipeline_gpt2_fpdt_blocked_qkv_tp2": ("gpt2", "megds", 2, 1, torch.float32, True, True, None),
    "megds_universal_pipeline_llama_gqa_tp2_pp2_bf16": ("llama_gqa", "megds-universal", 2, 2, torch.bfloat16, False,
                                                        True, None),
    "megds_universal_module_fpdt_blocked_qkv_tp2": ("llama_bias_tied", "megds-universal", 2, 1, torch.float32, True,
                                                    False, None),
    "megatron_lm_torch_llama_gqa_tp2_pp2": ("llama_gqa", "megatron-lm", 2, 2, torch.float32, False, False, None),
    "megatron_lm_torch_local_spec_llama_gqa_tp2_bf16": ("llama_gqa", "megatron-lm-local", 2, 1, torch.bfloat16, False,
                                                        False, None),
}


def _tokens(vocab):
    return torch.randint(0, min(vocab, 100), (2, SEQ), generator=torch.Generator().manual_seed(3))


def reference_model(family, vocab, dtype):
    """(our whole weights, our model config, transformers' logits) of a random HF model rounded to ``dtype``."""
    from transformers import AutoModelForCausalLM

    from megatron.checkpointing.hf.import_hf import hf_run_config, our_weights

    config = _hf_config(family)
    config.vocab_size = vocab
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape) * 0.05)
            param.copy_(param.to(dtype).float())
        logits = model(_tokens(vocab)).logits
    config_dict = config.to_dict()
    model_config = hf_run_config(config_dict, 64).model
    return our_weights(config_dict, dict(model.state_dict()), model_config), model_config, logits


def _padded_vocab(vocab, tp):
    multiple = 64 * tp
    return -(-vocab // multiple) * multiple


def write_source(case, folder, tokenizer_files):
    family, writer, tp, pp, dtype, blocked, pipeline, tokenizer = CASES[case]
    vocab = 100
    carried = None
    if tokenizer == "flags":
        from megatron.data import build_tokenizer

        vocab = build_tokenizer("GPT2BPETokenizer", vocab_file=tokenizer_files["gpt2"][0],
                                merge_file=tokenizer_files["gpt2"][1]).vocab_size
    elif tokenizer == "carried":
        from megatron.data import build_tokenizer

        vocab = build_tokenizer("SentencePieceTokenizer", tokenizer_model=tokenizer_files["spm"]).vocab_size
        carried = ("GPTSentencePieceTokenizer", tokenizer_files["spm"])
    weights, model, logits = reference_model(family, vocab, dtype)
    if writer == "megds-universal":
        megatron_files.write_megds_universal(weights, model, folder, tp=tp, pp=pp, padded_vocab=_padded_vocab(vocab, tp),
                                             vocab=vocab, dtype=dtype, blocked=blocked, pipeline=pipeline)
    elif writer == "megds":
        megatron_files.write_megds(weights, model, folder, tp=tp, pp=pp, padded_vocab=_padded_vocab(vocab, tp),
                                   dtype=dtype, blocked=blocked, pipeline=pipeline, tokenizer=carried)
    else:
        spec = "local" if writer.endswith("local") else "transformer_engine"
        megatron_files.write_megatron_lm(weights, model, folder, tp=tp, pp=pp, padded_vocab=_padded_vocab(vocab, tp),
                                         dtype=dtype, spec=spec)
    return vocab, logits


def _engine_logits(engine, vocab):
    engine.eval()
    with torch.no_grad():
        return engine(_tokens(vocab))[..., :vocab]


def import_and_logits(source, save, vocab, extra=()):
    """Rank side (one rank): convert, load the result with --finetune into a fresh engine, return
    (logits, the manifest's tokenizer record)."""
    from megatron.checkpointing import load_checkpoint
    from megatron.checkpointing.consolidate import resolve_checkpoint_folder
    from megatron.checkpointing.hf.export import stored_run_config
    from megatron.checkpointing.manifest import read_manifest

    tool("convert_from_megatron").main(["--load", source, "--save", save, *extra])
    manifest = read_manifest(resolve_checkpoint_folder(save))
    engine = _our_engine(stored_run_config(manifest, save), tp=1, zero=1)
    resumed = load_checkpoint(engine, save, finetune=True, log=lambda _: None)
    assert resumed.iteration == 0
    logits = _engine_logits(engine, vocab)
    engine.destroy()
    record = manifest.get("tokenizer") or {"vocab_size": stored_run_config(manifest, save).model.vocab_size,
                                           "carried": False}
    return logits, record


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory):
    """A GPT-2 BPE (vocab.json + merges.txt) and a SentencePiece model, trained here in about a second."""
    from tokenizers import ByteLevelBPETokenizer

    from megatron.data.tokenizers.sentencepiece_training import train_sentencepiece
    from tests.data.corpora import SAMPLE_DOCUMENTS, english_documents, write_jsonl

    directory = tmp_path_factory.mktemp("tokenizers")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(english_documents(100) + SAMPLE_DOCUMENTS, vocab_size=300, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    gpt2 = bpe.save_model(str(directory))
    corpus = write_jsonl(directory / "corpus.jsonl", SAMPLE_DOCUMENTS + english_documents())
    spm = train_sentencepiece([corpus], str(directory / "spm"), 600, log=lambda message: None)
    return {"gpt2": gpt2, "spm": spm}


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_logits_equal_the_source_models(case, tmp_path, tokenizer_files):
    source, save = str(tmp_path / "megatron"), str(tmp_path / "imported")
    vocab, reference = write_source(case, source, tokenizer_files)
    extra = []
    if CASES[case][7] == "flags":
        extra = ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", tokenizer_files["gpt2"][0],
                 "--merge-file", tokenizer_files["gpt2"][1]]
    logits, tokenizer = run_on_ranks(1, import_and_logits, source=source, save=save, vocab=vocab, extra=extra)[0]
    error = (logits - reference).abs().max().item()
    print(f"{case}: max |logit - source logit| = {error:.2e}")
    assert error <= LOGITS_ATOL, f"{case}: imported logits differ from the source model's by {error:.2e}"
    if CASES[case][7] is not None:  # the tokenizer travels: files copied, fingerprint recorded
        assert tokenizer["vocab_size"] == vocab
        expected = ("vocab.json", "merges.txt") if CASES[case][7] == "flags" else ("tokenizer.model",)
        for name in expected:
            assert os.path.isfile(os.path.join(save, "tokenizer", name))
    else:  # no tokenizer: the vocabulary is the source's padded size
        assert tokenizer == {"vocab_size": _padded_vocab(vocab, CASES[case][2]), "carried": False}


def test_a_wrong_qkv_order_guess_changes_the_logits(tmp_path, tokenizer_files):
    """Negative control: reading the FPDT (blocked) checkpoint as interleaved must be visible in the logits."""
    case = "megds_module_llama_fpdt_blocked_qkv_tp2_fp16"
    source, save = str(tmp_path / "megatron"), str(tmp_path / "imported")
    vocab, reference = write_source(case, source, tokenizer_files)
    logits, _ = run_on_ranks(1, import_and_logits, source=source, save=save, vocab=vocab,
                             extra=["--qkv-row-order", "interleaved"])[0]
    error = (logits - reference).abs().max().item()
    print(f"wrong QKV order: max |logit - source logit| = {error:.2e}")
    assert error > 100 * LOGITS_ATOL, f"the wrong QKV order moved the logits by only {error:.2e}"


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _convert_error(source, save):
    from megatron.checkpointing.safe_load import UnsafeCheckpointError

    try:
        tool("convert_from_megatron").main(["--load", source, "--save", save])
    except UnsafeCheckpointError as error:
        return str(error)
    return None


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, tokenizer_files):
    source, marker = str(tmp_path / "megatron"), str(tmp_path / "pwned")
    write_source("megds_module_llama_fpdt_blocked_qkv_tp2_fp16", source, tokenizer_files)
    path = os.path.join(source, "global_step10", "mp_rank_00_model_states.pt")
    state = safe_megatron_load(path)
    plain = {key: value for key, value in vars(state["args"]).items() if not isinstance(value, MegatronEnumStandIn)}
    state["args"] = argparse.Namespace(**plain, exploit=_RunsCode(marker))
    torch.save(state, path)
    message = run_on_ranks(1, _convert_error, source=source, save=str(tmp_path / "imported"))[0]
    assert message is not None and "refusing to load" in message and "mkdir" in message, message
    assert not os.path.exists(marker)


def _train(engine, vocab, steps):
    tokens = _tokens(vocab)
    losses = []
    engine.train()
    for _ in range(steps):
        loss = engine(tokens[:, :-1], labels=tokens[:, 1:]).mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def train_after_import(source, save, resumed_dir, vocab):
    """Rank side: import; run A trains 3 steps; run B trains 2, saves, run C resumes and trains the 3rd."""
    from megatron.checkpointing import load_checkpoint, save_checkpoint
    from megatron.checkpointing.consolidate import resolve_checkpoint_folder
    from megatron.checkpointing.hf.export import stored_run_config
    from megatron.checkpointing.manifest import read_manifest
    from megatron.core import parallel_state as ps

    tool("convert_from_megatron").main(["--load", source, "--save", save])
    run_config = stored_run_config(read_manifest(resolve_checkpoint_folder(save)), save)

    def fresh(load_dir, finetune):
        torch.manual_seed(11)
        engine = _our_engine(run_config, tp=1, zero=1)
        return engine, load_checkpoint(engine, load_dir, finetune=finetune, log=lambda _: None)

    def close(engine):
        engine.destroy()
        ps.destroy_model_parallel()

    engine, _ = fresh(save, True)
    uninterrupted = _train(engine, vocab, 3)
    close(engine)
    engine, _ = fresh(save, True)
    first = _train(engine, vocab, 2)
    save_checkpoint(engine, resumed_dir, iteration=2, consumed_train_samples=2, config=run_config)
    close(engine)
    engine, resumed = fresh(resumed_dir, False)
    assert resumed.iteration == 2
    last = _train(engine, vocab, 1)
    close(engine)
    return uninterrupted, first + last


def test_training_continues_from_an_import_and_resumes(tmp_path, tokenizer_files):
    source = str(tmp_path / "megatron")
    vocab, _ = write_source("megds_pipeline_llama_gqa_tp2_pp2_bf16_tokenizer_carried", source, tokenizer_files)
    uninterrupted, resumed = run_on_ranks(1, train_after_import, source=source, save=str(tmp_path / "imported"),
                                          resumed_dir=str(tmp_path / "resumed"), vocab=vocab)[0]
    assert uninterrupted[2] < uninterrupted[0], f"training from the import did not lower the loss: {uninterrupted}"
    assert resumed == pytest.approx(uninterrupted, abs=1e-6), (resumed, uninterrupted)


def direct_load_logits(source, vocab, family, finetune, num_layers=None):
    """Rank side (two ranks, TP=2): --load the Megatron folder itself into a fresh engine."""
    from megatron.checkpointing import load_checkpoint
    from megatron.checkpointing.hf.import_hf import hf_run_config
    from megatron.checkpointing.safe_load import CheckpointError

    config = _hf_config(family)
    config.vocab_size = vocab
    if num_layers:
        config.num_hidden_layers = config.n_layer = num_layers
    engine = _our_engine(hf_run_config(config.to_dict(), 64), tp=2, zero=1)
    try:
        resumed = load_checkpoint(engine, source, finetune=finetune, log=lambda _: None)
    except CheckpointError as error:
        engine.destroy()
        return str(error)
    assert resumed.iteration == 0
    engine.eval()
    from megatron.core import parallel_state as ps

    with torch.no_grad():
        logits = engine(_tokens(vocab))
    pieces = [torch.empty_like(logits) for _ in range(2)]
    torch.distributed.all_gather(pieces, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
    engine.destroy()
    return torch.cat(pieces, dim=-1)[..., :vocab]


def test_load_takes_a_megatron_deepspeed_folder_directly(tmp_path, tokenizer_files):
    """--load <Meg-DS run> --finetune at TP=2: converted once next to it, logits equal the source model's;
    without --finetune, or with another model's flags, a clear refusal."""
    source = str(tmp_path / "megatron")
    vocab, reference = write_source("megds_pipeline_gpt2_fpdt_blocked_qkv_tp2", source, tokenizer_files)
    logits = run_on_ranks(2, direct_load_logits, source=source, vocab=vocab, family="gpt2", finetune=True)[0]
    error = (logits - reference).abs().max().item()
    assert error <= LOGITS_ATOL, f"--load of the Meg-DS folder gives logits {error:.2e} off the source model's"
    assert os.path.isfile(os.path.join(source, "megatron-ds-import.universal", "megatron_import_done.json"))

    message = run_on_ranks(2, direct_load_logits, source=source, vocab=vocab, family="gpt2", finetune=False)[0]
    assert "run Megatron-DeepSpeed's ds_to_universal on it first" in message and "or pass --finetune" in message \
        and "--input_folder " + os.path.join(source, "global_step10") in message, message
    message = run_on_ranks(2, direct_load_logits, source=source, vocab=vocab, family="gpt2", finetune=True,
                           num_layers=4)[0]
    assert "num_layers: checkpoint 2, this run 4" in message, message


BASE_ARGS = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16, max_position_embeddings=16)


@pytest.mark.parametrize("extra, refusal", [
    ({"num_experts": [4]}, "mixture of experts"),
    ({"position_embedding_type": "alibi", "add_position_embedding": False}, "position embeddings 'alibi'"),
    ({"use_rotary_position_embeddings": True, "rotary_percent": 0.5}, "rotary_percent=0.5"),
    ({"bias_gelu_fusion": False}, "exact (erf) GELU"),
    ({"apply_residual_connection_post_layernorm": True}, "apply_residual_connection_post_layernorm"),
    ({"apply_layernorm_1p": True}, "apply_layernorm_1p"),
])
def test_architectures_megatron_ds_lacks_are_refused(extra, refusal):
    from megatron.checkpointing.megatron_import.arguments import model_fields
    from megatron.checkpointing.safe_load import CheckpointError

    with pytest.raises(CheckpointError, match="not one megatron-ds implements") as caught:
        model_fields(dict(BASE_ARGS, **extra))
    assert refusal in str(caught.value)


def test_torch_dist_checkpoints_are_refused(tmp_path):
    from megatron.checkpointing.megatron_import.sources import detect_megatron_checkpoint, open_megatron_checkpoint
    from megatron.checkpointing.safe_load import CheckpointError

    folder = tmp_path / "iter_0000010"
    folder.mkdir()
    (folder / "__0_0.distcp").write_bytes(b"")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("10")
    assert detect_megatron_checkpoint(str(tmp_path)) == "unsupported"
    with pytest.raises(CheckpointError, match="torch_dist"):
        open_megatron_checkpoint(str(tmp_path))


def test_use_checkpoint_args_reads_a_megatron_checkpoints_arguments(tmp_path, tokenizer_files):
    """--use-checkpoint-args --load <Meg-DS run>: the model flags come from its pickled arguments."""
    from megatron.config.migration import apply_megatron_deepspeed_defaults

    source = str(tmp_path / "megatron")
    write_source("megds_pipeline_llama_gqa_tp2_pp2_bf16_tokenizer_carried", source, tokenizer_files)
    explicit = {"use_checkpoint_args": True, "load": source}
    notes = apply_megatron_deepspeed_defaults(explicit)
    assert "from the checkpoint" in notes[0]
    assert {key: explicit[key] for key in ("num_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                           "position_embedding_type", "normalization", "swiglu", "add_bias_linear",
                                           "untie_embeddings_and_output_weights", "tokenizer_type")} == {
        "num_layers": 2, "hidden_size": 32, "num_attention_heads": 8, "num_key_value_heads": 2,
        "position_embedding_type": "rope", "normalization": "RMSNorm", "swiglu": True, "add_bias_linear": False,
        "untie_embeddings_and_output_weights": True, "tokenizer_type": "SentencePieceTokenizer"}
