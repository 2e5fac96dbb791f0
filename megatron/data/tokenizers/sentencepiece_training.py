"""Training a SentencePiece model on JSONL / text corpora (the library behind tools/train_sentencepiece.py)."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, Optional, Sequence

import sentencepiece

from megatron.data.document_reader import (
    MalformedRecordError,
    check_input_files,
    decode_record,
    read_raw_records,
    resolve_input_format,
)

# Special ids fixed for every model we train, so a model file alone tells the pipeline what they are.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3

# SentencePiece trains on "sentences" and silently drops longer ones; documents are fed one line at a time.
_MAX_SENTENCE_BYTES = 16384


def _document_lines(documents: Iterable[str]) -> Iterator[str]:
    for document in documents:
        for line in document.split("\n"):
            if line.strip():
                yield line


def iter_corpus_documents(
    input_files: Sequence[str], json_keys: Sequence[str] = ("text",), input_format: str = "auto",
    skip_malformed: bool = False,
) -> Iterator[str]:
    """Every document text of `input_files`, in order (JSONL keys or text blocks; see document_reader)."""
    check_input_files(input_files)
    for path in input_files:
        file_format = resolve_input_format(path, input_format)
        for record in read_raw_records(path, file_format):
            try:
                yield from decode_record(record, file_format, json_keys).values()
            except MalformedRecordError:
                if not skip_malformed:
                    raise


def train_sentencepiece_on_documents(
    documents: Iterable[str],
    model_prefix: str,
    vocab_size: int,
    *,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    num_threads: Optional[int] = None,
    max_sentences: int = 10_000_000,
    seed: int = 1234,
) -> str:
    """Train on an iterable of document texts; writes `{model_prefix}.model` and `.vocab`, returns the .model path.

    Settings follow Llama's tokenizer: byte fallback (no unknown tokens, any text round-trips), identity
    normalization and kept whitespace (detokenize(tokenize(text)) == text), digits split one per token.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if not isinstance(vocab_size, int) or vocab_size < 300:
        # 256 byte-fallback pieces + 4 specials come first; below ~300 there is no room for learned pieces.
        raise ValueError(f"vocab_size must be an integer >= 300 (byte fallback takes 260 ids), got {vocab_size!r}")
    if not 0.9 <= character_coverage <= 1.0:
        raise ValueError(f"character_coverage must be in [0.9, 1.0], got {character_coverage}")
    directory = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(directory, exist_ok=True)
    # Fixed seed: the same corpus gives the same model on every machine (ranks without a shared file system).
    sentencepiece.set_random_generator_seed(seed)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=_document_lines(documents),
            model_prefix=model_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as error:
        if "Vocabulary size too high" in str(error):
            raise ValueError(
                f"the corpus is too small for vocab_size={vocab_size}: SentencePiece says {error}; "
                "lower --vocab-size or add text"
            ) from None
        raise
    return model_prefix + ".model"


def train_sentencepiece(
    input_files: Sequence[str],
    model_prefix: str,
    vocab_size: int,
    *,
    json_keys: Sequence[str] = ("text",),
    input_format: str = "auto",
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    skip_malformed: bool = False,
    num_threads: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> str:
    """Train a SentencePiece model on JSONL/text files; returns the path of the written `.model` file."""
    documents = iter_corpus_documents(input_files, json_keys, input_format, skip_malformed)
    model_file = train_sentencepiece_on_documents(
        documents, model_prefix, vocab_size, model_type=model_type, character_coverage=character_coverage,
        num_threads=num_threads,
    )
    log(f"wrote {model_file} ({model_type}, vocab {vocab_size})")
    return model_file
