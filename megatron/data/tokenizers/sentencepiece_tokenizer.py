"""SentencePiece models (Llama-style `.model` files, or ones trained by tools/train_sentencepiece.py)."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import sentencepiece

from megatron.data.tokenizers.base import MegatronTokenizer


class SentencePieceTokenizer(MegatronTokenizer):
    """Wraps `sentencepiece.SentencePieceProcessor`; the model's `</s>` (eos) serves as end of document."""

    def __init__(self, model_file: str):
        if not os.path.isfile(model_file):
            raise FileNotFoundError(
                f"SentencePiece model file {model_file!r} (--tokenizer-model) does not exist; train one with "
                "tools/train_sentencepiece.py or point at an existing .model file"
            )
        self.model_file = model_file
        self._processor = sentencepiece.SentencePieceProcessor(model_file=model_file)
        if self._processor.eos_id() < 0:
            raise ValueError(
                f"SentencePiece model {model_file!r} has no end-of-sequence piece (eos_id = -1), which the "
                "data pipeline needs as end of document; retrain it with eos_id set"
            )

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    def tokenize(self, text: str) -> list[int]:
        return self._processor.encode(text, out_type=int)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._processor.decode([int(i) for i in ids])

    @property
    def eod(self) -> int:
        return self._processor.eos_id()

    @property
    def eos(self) -> int:
        return self._processor.eos_id()

    @property
    def bos(self) -> Optional[int]:
        bos = self._processor.bos_id()
        return bos if bos >= 0 else None

    @property
    def pad(self) -> int:
        pad = self._processor.pad_id()
        return pad if pad >= 0 else self.eod

    def __getstate__(self):
        # The C++ processor does not pickle; preprocessing workers rebuild it from the file.
        return {"model_file": self.model_file}

    def __setstate__(self, state):
        self.__init__(state["model_file"])
