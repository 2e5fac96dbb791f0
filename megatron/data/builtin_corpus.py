"""A real English corpus that every Python install carries: Python's own documentation.

Sources, both read from files without importing anything:
- `pydoc_data.topics.topics`: the long help texts behind `help("FOR")` etc. (~0.5 MB), cut into documents at
  paragraph boundaries;
- docstrings of the standard library's modules, classes and functions (~1 MB), read with `ast`.
Documents are shuffled with a fixed seed so the train/valid/test split (contiguous document ranges) is
representative. `prepare_builtin_corpus` writes the corpus as JSONL, trains a SentencePiece model on it and
preprocesses it to `.bin/.idx`, caching everything under `cache_dir`; a stamp file written last makes later
calls instant.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import shutil
import sys
import sysconfig
import uuid
from typing import Callable, Iterator, Optional

import numpy as np

from megatron.data.file_lock import run_once_across_ranks
from megatron.data.indexed_dataset import IndexedDataset

# Bump when the corpus or its processing changes, so old caches are not reused.
BUILTIN_CORPUS_VERSION = 1
MIN_DOCSTRING_CHARS = 300  # shorter docstrings are mostly signatures and one-liners, not prose
MAX_DOCUMENT_CHARS = 3000
MIN_CORPUS_CHARS = 200_000  # below this, a vocabulary of thousands of pieces cannot be learned  # help topics are cut into documents of at most about this size
# Parts of the stdlib that are tests, demos or vendored tools rather than documentation prose.
_SKIPPED_STDLIB_DIRS = {
    "test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "tkinter", "turtledemo",
    "__pycache__", "ensurepip", "pydoc_data",
}


def _help_topic_documents() -> Iterator[str]:
    try:
        import pydoc_data.topics  # a dict literal of strings: importing it runs no other code
    except ImportError:  # some distributions package Python's documentation separately
        return
    for name in sorted(pydoc_data.topics.topics):
        document = ""
        for paragraph in pydoc_data.topics.topics[name].split("\n\n"):
            if document and len(document) + len(paragraph) > MAX_DOCUMENT_CHARS:
                yield document.strip("\n")
                document = ""
            document += paragraph + "\n\n"
        if document.strip():
            yield document.strip("\n")


def _stdlib_docstrings() -> Iterator[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    for root, directories, files in os.walk(stdlib):
        directories[:] = sorted(d for d in directories if d not in _SKIPPED_STDLIB_DIRS and not d.startswith("config-"))
        for file_name in sorted(files):
            if not file_name.endswith(".py"):
                continue
            try:
                with open(os.path.join(root, file_name), "rb") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, ValueError, OSError):
                continue  # a file this Python cannot parse (e.g. a deliberately broken fixture) has nothing for us
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    docstring = ast.get_docstring(node)
                    if docstring and len(docstring) >= MIN_DOCSTRING_CHARS:
                        yield docstring


def collect_builtin_documents(seed: int = 1234) -> list[str]:
    """The corpus documents, deduplicated and shuffled deterministically."""
    seen, documents = set(), []
    for document in [*_help_topic_documents(), *_stdlib_docstrings()]:
        if document not in seen:
            seen.add(document)
            documents.append(document)
    total_chars = sum(map(len, documents))
    if total_chars < MIN_CORPUS_CHARS:
        raise ValueError(
            f"this Python install holds only {total_chars} characters of documentation (pydoc_data and stdlib "
            f"sources under {sysconfig.get_paths()['stdlib']}); the built-in corpus needs {MIN_CORPUS_CHARS}. "
            "Install the full standard library, or pass --data-path with your own preprocessed corpus"
        )
    random.Random(seed).shuffle(documents)
    return documents


def _corpus_directory(cache_dir: str, vocab_size: int, model_type: str) -> str:
    # The stdlib text depends on the Python version; everything else on our parameters.
    version = ".".join(map(str, sys.version_info[:3]))
    return os.path.join(cache_dir, f"builtin-v{BUILTIN_CORPUS_VERSION}-py{version}-{model_type}{vocab_size}")


def _build(directory: str, vocab_size: int, model_type: str, workers: int, log: Callable[[str], None]) -> None:
    from megatron.data.preprocessing import PreprocessConfig, preprocess_corpus
    from megatron.data.tokenizers.sentencepiece_training import train_sentencepiece_on_documents

    # Build in a fresh scratch directory and rename it into place, so a crash never leaves a half corpus.
    scratch = f"{directory}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.makedirs(scratch)
    try:
        documents = collect_builtin_documents()
        corpus_path = os.path.join(scratch, "corpus.jsonl")
        with open(corpus_path, "w", encoding="utf-8") as f:
            for document in documents:
                f.write(json.dumps({"text": document}) + "\n")
        # One thread: SentencePiece's result depends on the thread count, and every node must agree.
        train_sentencepiece_on_documents(
            documents, os.path.join(scratch, "tokenizer"), vocab_size, model_type=model_type, num_threads=1
        )
        report = preprocess_corpus(
            PreprocessConfig(
                input_files=[corpus_path], output_prefix=os.path.join(scratch, "builtin"),
                tokenizer_type="SentencePieceTokenizer", tokenizer_model=os.path.join(scratch, "tokenizer.model"),
                append_eod=True, workers=workers, log_interval=10**9,
            ),
            log=lambda message: None,  # it would name the scratch directory; we report once below
        )
        with open(corpus_path, "rb") as f:
            corpus_sha256 = hashlib.sha256(f.read()).hexdigest()
        stamp = {
            "version": BUILTIN_CORPUS_VERSION, "python": sys.version, "documents": len(documents),
            "tokens": report.tokens_written["text"], "vocab_size": vocab_size, "model_type": model_type,
            "corpus_sha256": corpus_sha256,
        }
        with open(os.path.join(scratch, "stamp.json"), "w") as f:
            json.dump(stamp, f, indent=1)
        if os.path.exists(directory):  # a stale, stamp-less leftover of an older failed build
            shutil.rmtree(directory)
        os.replace(scratch, directory)
        log(f"built the built-in corpus in {directory}: {len(documents)} documents, {stamp['tokens']} tokens, "
            f"SentencePiece {model_type} vocabulary of {vocab_size}")
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def prepare_builtin_corpus(
    cache_dir: str,
    vocab_size: int = 8000,
    *,
    model_type: str = "bpe",
    workers: int = 1,
    barrier: Optional[Callable[[], None]] = None,
    rank: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[str, str]:
    """Build (once) and return `(data_prefix, tokenizer_model_path)` of the built-in English corpus.

    data_prefix names `{data_prefix}.bin/.idx` (documents end with EOD), for `build_train_valid_test_datasets`;
    the tokenizer is a SentencePieceTokenizer model. Safe to call from every rank at once: one builds under a
    file lock (rank 0 when `barrier` is given), the others wait and reuse it.
    """
    directory = _corpus_directory(os.path.abspath(cache_dir), vocab_size, model_type)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    stamp_path = os.path.join(directory, "stamp.json")
    run_once_across_ranks(
        directory + ".lock", lambda: os.path.isfile(stamp_path),
        lambda: _build(directory, vocab_size, model_type, workers, log), barrier, rank,
    )
    return os.path.join(directory, "builtin_text_document"), os.path.join(directory, "tokenizer.model")


def unigram_entropy(data_prefix: str) -> float:
    """Entropy of the corpus' token frequencies, in nats per token (EOD included).

    A model that ignores context can do no better than this cross-entropy; a language model's loss falling well
    below it shows that it learned to use context.
    """
    tokens = IndexedDataset(data_prefix).all_tokens()
    if len(tokens) == 0:
        raise ValueError(f"{data_prefix} holds no tokens")
    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    probabilities = counts[counts > 0] / len(tokens)
    return float(-(probabilities * np.log(probabilities)).sum())
