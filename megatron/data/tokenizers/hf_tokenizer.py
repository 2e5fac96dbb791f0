"""Any tokenizer saved as a Hugging Face `tokenizer.json`, read with the `tokenizers` package (local file)."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import tokenizers

from megatron.data.tokenizers.base import MegatronTokenizer

# Names used for end of document / beginning of sequence by common model families, in order of preference.
EOD_TOKEN_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
BOS_TOKEN_NAMES = ("<s>", "<|begin_of_text|>", "<bos>")
PAD_TOKEN_NAMES = ("<pad>", "[PAD]", "<|pad|>")


class HFTokenizer(MegatronTokenizer):
    """`tokenizer_json_path` is a tokenizer.json file, or a directory holding one (never a hub name)."""

    def __init__(self, tokenizer_json_path: str, eod_token: Optional[str] = None):
        path = tokenizer_json_path
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"HFTokenizer: {path!r} (--tokenizer-model) does not exist; give a local tokenizer.json file "
                "or a directory containing one (hub names are not downloaded)"
            )
        self.tokenizer_json_path = path
        self._tokenizer = tokenizers.Tokenizer.from_file(path)
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        names = (eod_token,) if eod_token is not None else EOD_TOKEN_NAMES
        found = [vocab[name] for name in names if name in vocab]
        if not found:
            raise ValueError(
                f"tokenizer {path!r} has none of the end-of-document tokens {list(names)}; pass eod_token= "
                "naming the token that ends a document"
            )
        self._eod = found[0]
        self._bos = next((vocab[name] for name in BOS_TOKEN_NAMES if name in vocab), None)
        self._pad = next((vocab[name] for name in PAD_TOKEN_NAMES if name in vocab), self._eod)
        self._vocab_size = max(vocab.values()) + 1

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def eos(self) -> int:
        return self._eod

    @property
    def bos(self) -> Optional[int]:
        return self._bos

    @property
    def pad(self) -> int:
        return self._pad
