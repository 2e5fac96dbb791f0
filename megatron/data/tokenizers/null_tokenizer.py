"""A tokenizer for data that is already token ids: text is space-separated integers."""

from __future__ import annotations

from typing import Sequence

from megatron.data.tokenizers.base import MegatronTokenizer


class NullTokenizer(MegatronTokenizer):
    """Ids 0..vocab_size-1 are read from text as integers; `eod` is the one extra id, `vocab_size`.

    As in Megatron-LM, the reported `vocab_size` is therefore the given size + 1 so that `eod` is a valid id.
    """

    def __init__(self, vocab_size: int):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(
                f"NullTokenizer needs a positive integer vocab_size (--vocab-size), got {vocab_size!r}"
            )
        self._num_text_ids = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._num_text_ids + 1

    @property
    def eod(self) -> int:
        return self._num_text_ids

    def tokenize(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            try:
                token = int(word)
            except ValueError:
                raise ValueError(
                    f"NullTokenizer reads space-separated integers, but got {word[:40]!r}; "
                    "use another --tokenizer-type for natural text"
                ) from None
            if not 0 <= token < self._num_text_ids:
                raise ValueError(
                    f"NullTokenizer(vocab_size={self._num_text_ids}) got token id {token}, outside "
                    f"[0, {self._num_text_ids}); raise --vocab-size or fix the input"
                )
            ids.append(token)
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)
