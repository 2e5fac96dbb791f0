"""GPT-2 byte-level BPE from `vocab.json` + `merges.txt`, written from the published algorithm.

Byte-level BPE in three steps:
1. split text into pre-tokens with GPT-2's regex (contractions, letter runs, digit runs, other symbols,
   whitespace), each optionally led by one space;
2. map every UTF-8 byte of a pre-token to a printable unicode character (so that the vocabulary, a JSON file,
   can hold arbitrary bytes) and start from one symbol per byte;
3. repeatedly merge the adjacent pair whose merge was learned earliest (lowest line in merges.txt) until no
   learned pair remains; the resulting symbols are looked up in vocab.json.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from megatron.data.tokenizers.base import MegatronTokenizer

try:
    import regex  # the stdlib `re` has no \p{L} / \p{N} unicode classes, which GPT-2's pattern needs
except ImportError as error:  # pragma: no cover - regex ships with transformers and most environments
    raise ImportError("GPT2BPETokenizer needs the `regex` package: pip install regex") from error

END_OF_TEXT = "<|endoftext|>"

# GPT-2's pre-tokenization pattern (from the GPT-2 paper's released encoder).
PRETOKEN_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)

# Words repeat a lot in natural text, so BPE results are memoized; the cap bounds memory on huge corpora.
_MAX_CACHED_WORDS = 200_000


def byte_to_unicode_table() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map.

    Bytes that are already printable and not whitespace ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves;
    the remaining 68 bytes map, in byte order, to the characters 256, 257, ... .
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    next_char = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(next_char)
            next_char += 1
    return table


def _read_vocab(vocab_file: str) -> dict[str, int]:
    with open(vocab_file, encoding="utf-8") as f:
        try:
            vocab = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"vocab file {vocab_file!r} is not valid JSON: {error}") from None
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()
    ):
        raise ValueError(f"vocab file {vocab_file!r} must be a JSON object mapping token strings to integer ids")
    return vocab


def _read_merge_ranks(merge_file: str) -> dict[tuple[str, str], int]:
    ranks = {}
    with open(merge_file, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line or (line_number == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(
                    f"{merge_file}:{line_number}: a merge line holds two symbols separated by one space, "
                    f"got {line[:80]!r}"
                )
            ranks.setdefault((parts[0], parts[1]), len(ranks))
    return ranks


class GPT2BPETokenizer(MegatronTokenizer):
    def __init__(self, vocab_file: str, merge_file: str):
        for path, flag in ((vocab_file, "--vocab-file"), (merge_file, "--merge-file")):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"GPT2BPETokenizer: {flag} {path!r} does not exist")
        self._encoder = _read_vocab(vocab_file)
        self._decoder = {i: token for token, i in self._encoder.items()}
        self._merge_ranks = _read_merge_ranks(merge_file)
        self._byte_encoder = byte_to_unicode_table()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._cache: dict[str, tuple[str, ...]] = {}
        if END_OF_TEXT not in self._encoder:
            raise ValueError(f"vocab file {vocab_file!r} has no {END_OF_TEXT!r} entry, which serves as end of document")
        self._eod = self._encoder[END_OF_TEXT]
        self._vocab_size = max(self._encoder.values()) + 1

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def eos(self) -> int:
        return self._eod

    def _merge(self, word: str) -> tuple[str, ...]:
        """BPE symbols of one byte-mapped pre-token."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word)
        not_learned = len(self._merge_ranks)
        while len(symbols) > 1:
            ranks = [self._merge_ranks.get(pair, not_learned) for pair in zip(symbols, symbols[1:])]
            best = min(ranks)
            if best == not_learned:
                break
            first, second = symbols[ranks.index(best)], symbols[ranks.index(best) + 1]
            # Merge every occurrence of the pair, left to right, never overlapping ("aaa" -> "aa" "a").
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        result = tuple(symbols)
        if len(self._cache) >= _MAX_CACHED_WORDS:
            self._cache.clear()
        self._cache[word] = result
        return result

    def tokenize(self, text: str) -> list[int]:
        ids = []
        for pretoken in PRETOKEN_PATTERN.findall(text):
            mapped = "".join(self._byte_encoder[b] for b in pretoken.encode("utf-8"))
            for symbol in self._merge(mapped):
                try:
                    ids.append(self._encoder[symbol])
                except KeyError:
                    raise ValueError(
                        f"BPE produced symbol {symbol!r}, which vocab.json lacks: the vocab and merges files "
                        "do not belong together"
                    ) from None
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        try:
            mapped = "".join(self._decoder[int(i)] for i in ids)
        except KeyError as error:
            raise ValueError(f"token id {error.args[0]} is not in the vocabulary (size {self.vocab_size})") from None
        # A token boundary may split a multi-byte character; decoding the whole byte string first avoids that,
        # and 'replace' keeps detokenizing a slice of a sample from failing on a cut character.
        return bytes(self._byte_decoder[c] for c in mapped).decode("utf-8", errors="replace")
