"""The tokenizer travels with a conversion: its files are copied next to the converted weights.

Megatron tokenizer types map to Hugging Face files as:
    SentencePieceTokenizer  <model>.model           -> tokenizer.model (+ tokenizer_config.json, LlamaTokenizer)
    GPT2BPETokenizer        vocab.json, merges.txt  -> the same names (+ tokenizer_config.json, GPT2Tokenizer)
    HFTokenizer             tokenizer.json or a dir -> the tokenizer files found there
    NullTokenizer           nothing to copy
"""

import json
import os
import shutil
from typing import List, Optional

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                      "vocab.json", "merges.txt", "added_tokens.json")


def _copy(source: str, target_dir: str, name: str) -> str:
    if not os.path.isfile(source):
        raise ValueError(f"tokenizer file {source} does not exist; pass the tokenizer's location explicitly "
                         f"(--tokenizer-model / --vocab-file / --merge-file)")
    target = os.path.join(target_dir, name)
    shutil.copyfile(source, target)
    return target


def _write_config(target_dir: str, config: dict) -> str:
    path = os.path.join(target_dir, "tokenizer_config.json")
    with open(path, "w") as handle:
        json.dump(config, handle, indent=1)
    return path


def export_tokenizer(target_dir: str, tokenizer_type: Optional[str], *, tokenizer_model: Optional[str] = None,
                     vocab_file: Optional[str] = None, merge_file: Optional[str] = None) -> List[str]:
    """Copy the tokenizer's files into ``target_dir`` in Hugging Face's names; returns the files written."""
    if tokenizer_type == "SentencePieceTokenizer" and tokenizer_model:
        written = [_copy(tokenizer_model, target_dir, "tokenizer.model")]
        # Megatron's SentencePieceTokenizer adds neither BOS nor EOS when encoding; say the same to HF.
        written.append(_write_config(target_dir, {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False,
                                                  "add_eos_token": False, "legacy": True}))
        return written
    if tokenizer_type == "GPT2BPETokenizer" and vocab_file and merge_file:
        return [_copy(vocab_file, target_dir, "vocab.json"), _copy(merge_file, target_dir, "merges.txt"),
                _write_config(target_dir, {"tokenizer_class": "GPT2Tokenizer"})]
    if tokenizer_type == "HFTokenizer" and tokenizer_model:
        return copy_hf_tokenizer_files(tokenizer_model, target_dir)
    return []


def copy_hf_tokenizer_files(source: str, target_dir: str) -> List[str]:
    """Tokenizer files of a Hugging Face folder (or a lone tokenizer.json) into ``target_dir``."""
    if os.path.isfile(source):
        return [_copy(source, target_dir, os.path.basename(source))]
    os.makedirs(target_dir, exist_ok=True)
    return [_copy(os.path.join(source, name), target_dir, name) for name in HF_TOKENIZER_FILES
            if os.path.isfile(os.path.join(source, name))]
