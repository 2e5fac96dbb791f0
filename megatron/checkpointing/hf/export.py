"""Checkpoint of any layout -> a Hugging Face model folder (config.json, model.safetensors, tokenizer files).

The architecture follows from the model configuration stored in the checkpoint: learned positions +
LayerNorm + GELU become ``GPT2LMHeadModel``, RoPE + RMSNorm + SwiGLU (with GQA) ``LlamaForCausalLM``, and the
same with Mixture-of-Experts MLPs ``MixtralForCausalLM``.
"""

import os
from typing import Dict, Optional, Tuple

import torch
from safetensors.torch import save_file

from megatron.checkpointing.consolidate import consolidated_weights
from megatron.checkpointing.hf import gpt2, llama, mixtral
from megatron.checkpointing.hf.tokenizer_files import export_tokenizer
from megatron.checkpointing.safe_load import CheckpointError


def hf_family(model) -> str:
    """'gpt2' or 'llama' for a ModelConfig; a ValueError naming both mismatches otherwise."""
    errors = []
    for name, module in (("gpt2", gpt2), ("llama", llama)):
        checker = module.check_gpt2_layout if name == "gpt2" else module.check_llama_layout
        try:
            checker(model)
            return name
        except ValueError as error:
            errors.append(str(error))
    raise ValueError("no Hugging Face architecture fits this model. " + " | ".join(errors))


def stored_run_config(manifest: dict, folder: str):
    from megatron.config import RunConfig

    if not manifest.get("config"):
        raise CheckpointError(f"{folder} stores no run configuration (it was not written by pretrain or "
                              f"convert_from_hf), so its architecture is unknown")
    return RunConfig.from_dict(manifest["config"])


def _tokenizer_ids(data, vocab_size: int) -> Tuple[Optional[int], Optional[int]]:
    """(bos, eos) of the run's tokenizer, when it can be built here; (None, None) otherwise."""
    if not data.tokenizer_type or data.tokenizer_type == "NullTokenizer":
        return None, None
    try:
        from megatron.data import build_tokenizer

        tokenizer = build_tokenizer(data.tokenizer_type, tokenizer_model=data.tokenizer_model,
                                    vocab_file=data.vocab_file, merge_file=data.merge_file, vocab_size=vocab_size)
    except (ValueError, OSError, ImportError):
        return None, None
    return getattr(tokenizer, "bos", None), tokenizer.eod


def hf_state_and_config(weights: Dict[str, torch.Tensor], run_config):
    """(Hugging Face state dict, transformers config) for whole weights of ``run_config``'s model."""
    model = run_config.model
    family = "mixtral" if run_config.moe.enabled else hf_family(model)
    vocab = weights["embedding.word_embeddings.weight"].shape[0]
    if model.vocab_size and vocab != model.vocab_size:
        raise CheckpointError(f"the embedding has {vocab} rows but the run's vocabulary is {model.vocab_size}")
    bos, eos = _tokenizer_ids(run_config.data, model.vocab_size)
    if family == "mixtral":
        try:
            config = mixtral.hf_config(model, run_config.moe, vocab, eos_token_id=eos, bos_token_id=bos)
        except ValueError as error:
            raise CheckpointError(f"{error}; such MoE runs cannot be exported to Hugging Face") from None
        return mixtral.to_hf(weights, model), config
    if family == "gpt2":
        return gpt2.to_hf(weights, model), gpt2.hf_config(model, vocab, eos_token_id=eos)
    return llama.to_hf(weights, model), llama.hf_config(model, vocab, eos_token_id=eos, bos_token_id=bos)


def export_to_hf(checkpoint: str, output_dir: str, *, tokenizer_type: Optional[str] = None,
                 tokenizer_model: Optional[str] = None, vocab_file: Optional[str] = None,
                 merge_file: Optional[str] = None, log=print) -> str:
    """Write ``checkpoint`` (a save folder or global_stepN) as a Hugging Face model folder; returns its family.

    The tokenizer is the run's (from the stored configuration) unless given here.
    """
    weights, manifest = consolidated_weights(checkpoint, log=log)
    run_config = stored_run_config(manifest, checkpoint)
    state, config = hf_state_and_config(weights, run_config)
    os.makedirs(output_dir, exist_ok=True)
    save_file(state, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(output_dir)
    data = run_config.data
    written = export_tokenizer(output_dir, tokenizer_type or data.tokenizer_type,
                               tokenizer_model=tokenizer_model or data.tokenizer_model,
                               vocab_file=vocab_file or data.vocab_file, merge_file=merge_file or data.merge_file)
    family = config.architectures[0]
    log(f"> wrote {family} ({len(state)} tensors) to {output_dir}"
        + (f"; tokenizer: {', '.join(os.path.basename(path) for path in written)}" if written
           else "; no tokenizer files (pass --tokenizer-model or --vocab-file/--merge-file to include one)"))
    return family
