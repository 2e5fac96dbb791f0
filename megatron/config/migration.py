"""Megatron-DeepSpeed's defaults and tolerances, applied to the explicit values before resolution.

Each adjustment is logged once at start-up (RunConfig.notes), so a migrated script behaves as before and
the log says what was assumed:
- `--vocab-file/--merge-file` without `--tokenizer-type` means GPT2BPETokenizer (Megatron-DeepSpeed's default);
- `--save-interval` without `--save` is accepted and has no effect (Megatron-DeepSpeed never checked);
- `--use-checkpoint-args` fills the architecture and tokenizer from the checkpoint in `--load`.
"""

import json
import os
from typing import Any, Dict, List

from megatron.config.errors import ConfigError

# megatron/checkpointing/manifest.py's file name; the config layer reads it without importing that layer.
MANIFEST_NAME = "checkpoint_manifest.json"

# What --use-checkpoint-args takes from the saved configuration (Megatron's list: shape and tokenizer).
CHECKPOINT_ARGS = {
    "model": ("model_family", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
              "num_key_value_heads", "kv_channels", "max_position_embeddings", "position_embedding_type",
              "rotary_base", "normalization", "norm_epsilon", "swiglu", "add_bias_linear",
              "untie_embeddings_and_output_weights", "make_vocab_size_divisible_by", "seq_length"),
    "data": ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file"),
    "parallel": ("tensor_model_parallel_size", "pipeline_model_parallel_size"),
}


def apply_megatron_deepspeed_defaults(explicit: Dict[str, Any]) -> List[str]:
    """Adjust `explicit` (field -> value typed) in place; returns the notes to log."""
    notes: List[str] = []
    if explicit.get("use_checkpoint_args"):
        notes += _fill_from_checkpoint(explicit)
    if "tokenizer_type" not in explicit and "vocab_file" in explicit:
        explicit["tokenizer_type"] = "GPT2BPETokenizer"
        notes.append("--vocab-file without --tokenizer-type: using GPT2BPETokenizer (Megatron-DeepSpeed's default)")
    if "save_interval" in explicit and not explicit.get("save"):
        notes.append(f"--save-interval {explicit['save_interval']} has no effect without --save: this run saves "
                     f"no checkpoints")
        del explicit["save_interval"]
    return notes


def _fill_from_checkpoint(explicit: Dict[str, Any]) -> List[str]:
    load = explicit.get("load")
    if not load:
        raise ConfigError("--use-checkpoint-args has no effect without --load; add --load DIR or drop it")
    saved = saved_config(load)
    if saved is None:
        raise ConfigError(f"--use-checkpoint-args: {load} holds no checkpoint (no `latest` file naming a folder "
                          f"with a manifest); drop the flag or point --load at a checkpoint folder")
    filled = []
    for group, names in CHECKPOINT_ARGS.items():
        for name in names:
            value = saved.get(group, {}).get(name)
            if value is None:
                continue
            value = tuple(value) if isinstance(value, list) else value
            if name in explicit and explicit[name] != value:
                raise ConfigError(f"--{name.replace('_', '-')} {explicit[name]} contradicts the checkpoint's "
                                  f"{value} (--use-checkpoint-args); drop the flag or --use-checkpoint-args")
            if name not in explicit:
                explicit[name] = value
                filled.append(name)
    return [f"--use-checkpoint-args: took {', '.join(filled) or 'nothing new'} from the checkpoint in {load}"]


def saved_config(load_dir: str):
    """The RunConfig dict stored in the manifest of the checkpoint `latest` names (for a Megatron-DeepSpeed /
    Megatron-LM folder: its model and tokenizer, read from its pickled arguments), or None."""
    from megatron.checkpointing.megatron_import.arguments import checkpoint_config
    from megatron.checkpointing.megatron_import.sources import detect_megatron_checkpoint

    if detect_megatron_checkpoint(load_dir) not in (None, "unsupported"):
        return checkpoint_config(load_dir)
    latest = os.path.join(load_dir, "latest")
    if not os.path.isfile(latest):
        return None
    with open(latest) as handle:
        tag = handle.read().strip()
    manifest = os.path.join(load_dir, tag, MANIFEST_NAME)
    if not os.path.isfile(manifest):
        return None
    with open(manifest) as handle:
        return json.load(handle).get("config")
