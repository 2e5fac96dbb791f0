"""Tokenizers: one interface (`MegatronTokenizer`) and `build_tokenizer` picking one by Megatron's type name."""

from __future__ import annotations

from typing import Optional

from megatron.data.tokenizers.base import MegatronTokenizer
from megatron.data.tokenizers.null_tokenizer import NullTokenizer
from megatron.core.vocab_padding import pad_vocab_size

TOKENIZER_TYPES = ("SentencePieceTokenizer", "GPT2BPETokenizer", "HFTokenizer", "NullTokenizer")


def _require(value, flag: str, tokenizer_type: str):
    if value is None:
        raise ValueError(f"--tokenizer-type {tokenizer_type} needs {flag}")
    return value


def build_tokenizer(
    tokenizer_type: str,
    *,
    tokenizer_model: Optional[str] = None,
    vocab_file: Optional[str] = None,
    merge_file: Optional[str] = None,
    vocab_size: Optional[int] = None,
) -> MegatronTokenizer:
    """The tokenizer named by `tokenizer_type` (Megatron-LM's names), from local files only.

    SentencePieceTokenizer: tokenizer_model (.model); GPT2BPETokenizer: vocab_file + merge_file;
    HFTokenizer: tokenizer_model (tokenizer.json or its directory); NullTokenizer: vocab_size.
    """
    # Imports are per type so that, e.g., NullTokenizer users need neither sentencepiece nor regex.
    if tokenizer_type == "SentencePieceTokenizer":
        from megatron.data.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer(_require(tokenizer_model, "--tokenizer-model (a .model file)", tokenizer_type))
    if tokenizer_type == "GPT2BPETokenizer":
        from megatron.data.tokenizers.gpt2_bpe_tokenizer import GPT2BPETokenizer

        return GPT2BPETokenizer(
            _require(vocab_file, "--vocab-file (vocab.json)", tokenizer_type),
            _require(merge_file, "--merge-file (merges.txt)", tokenizer_type),
        )
    if tokenizer_type == "HFTokenizer":
        from megatron.data.tokenizers.hf_tokenizer import HFTokenizer

        return HFTokenizer(_require(tokenizer_model, "--tokenizer-model (a tokenizer.json file)", tokenizer_type))
    if tokenizer_type == "NullTokenizer":
        return NullTokenizer(_require(vocab_size, "--vocab-size", tokenizer_type))
    raise ValueError(f"unknown tokenizer type {tokenizer_type!r}; choose one of {TOKENIZER_TYPES}")


def __getattr__(name):
    # Lazy access to the tokenizer classes with heavy optional imports (sentencepiece, regex, tokenizers).
    lazy = {
        "SentencePieceTokenizer": "megatron.data.tokenizers.sentencepiece_tokenizer",
        "GPT2BPETokenizer": "megatron.data.tokenizers.gpt2_bpe_tokenizer",
        "HFTokenizer": "megatron.data.tokenizers.hf_tokenizer",
        "train_sentencepiece": "megatron.data.tokenizers.sentencepiece_training",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MegatronTokenizer", "NullTokenizer", "SentencePieceTokenizer", "GPT2BPETokenizer", "HFTokenizer",
    "build_tokenizer", "pad_vocab_size", "train_sentencepiece", "TOKENIZER_TYPES",
]
