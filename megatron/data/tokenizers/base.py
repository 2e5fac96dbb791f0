"""The few things the data pipeline and the model need from any tokenizer."""

from __future__ import annotations

import abc
from typing import Optional, Sequence


class MegatronTokenizer(abc.ABC):
    """Text <-> token ids, plus the special ids the dataset needs.

    `eod` (end of document) is the token appended after every document by preprocessing; the dataset uses it
    for `eod_mask_loss` and for resetting positions/attention at document boundaries. `pad` defaults to
    `eod` because padded positions are always excluded from the loss, so their id never matters.
    """

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct ids this tokenizer can emit (ids are in [0, vocab_size))."""

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, without any special token added."""

    @abc.abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of `ids`."""

    @property
    @abc.abstractmethod
    def eod(self) -> int:
        """End-of-document id."""

    @property
    def pad(self) -> int:
        return self.eod

    @property
    def bos(self) -> Optional[int]:
        """Beginning-of-sequence id, or None when the vocabulary has none."""
        return None

    @property
    def eos(self) -> Optional[int]:
        """End-of-sequence id, or None when the vocabulary has none."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eod={self.eod})"
