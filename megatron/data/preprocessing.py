"""JSONL / text files -> Megatron indexed datasets (`{prefix}_{key}_document.bin/.idx`), optionally in parallel.

The main process reads raw records (cheap byte splitting) and writes the outputs; worker processes decode
UTF-8/JSON and tokenize (the expensive part). `Pool.imap` returns results in submission order, so documents
keep their input order whatever the number of workers.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from megatron.data.document_reader import (
    MalformedRecordError,
    RawRecord,
    check_input_files,
    decode_record,
    read_raw_records,
    resolve_input_format,
)
from megatron.data.indexed_dataset import IndexedDatasetWriter, token_dtype_for_vocab
from megatron.data.tokenizers import build_tokenizer


@dataclass
class PreprocessConfig:
    """What tools/preprocess_data.py's flags resolve to (same names, without dashes)."""

    input_files: Sequence[str]
    output_prefix: str
    tokenizer_type: str
    json_keys: Sequence[str] = ("text",)
    tokenizer_model: Optional[str] = None
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None
    vocab_size: Optional[int] = None
    append_eod: bool = False
    workers: int = 1
    log_interval: int = 1000
    skip_malformed: bool = False
    input_format: str = "auto"  # auto: .txt/.text are text, anything else JSONL
    records_per_task: int = 64  # records sent to a worker at once: amortizes inter-process overhead

    def tokenizer_kwargs(self) -> dict:
        return dict(
            tokenizer_type=self.tokenizer_type, tokenizer_model=self.tokenizer_model, vocab_file=self.vocab_file,
            merge_file=self.merge_file, vocab_size=self.vocab_size,
        )

    def output_prefix_of(self, key: str) -> str:
        return f"{self.output_prefix}_{key}_document"


@dataclass
class PreprocessReport:
    records_read: int = 0
    malformed_skipped: int = 0
    documents_written: dict = field(default_factory=dict)  # key -> count
    empty_skipped: dict = field(default_factory=dict)  # key -> count of empty / whitespace-only documents
    tokens_written: dict = field(default_factory=dict)
    input_bytes: int = 0
    seconds: float = 0.0
    output_prefixes: dict = field(default_factory=dict)

    @property
    def documents_per_second(self) -> float:
        return self.records_read / max(self.seconds, 1e-9)

    @property
    def megabytes_per_second(self) -> float:
        return self.input_bytes / 1e6 / max(self.seconds, 1e-9)


class _EncodedRecord(NamedTuple):
    path: str
    line_number: int
    num_bytes: int
    tokens: Optional[dict]  # key -> token array, or None for an empty document; None for all when malformed
    problem: Optional[str]  # why the record is malformed (exceptions with extra fields do not pickle)


class _DocumentEncoder:
    def __init__(self, tokenizer_kwargs: dict, json_keys: Sequence[str], append_eod: bool):
        self.tokenizer = build_tokenizer(**tokenizer_kwargs)
        self.json_keys = tuple(json_keys)
        self.append_eod = append_eod
        self.dtype = token_dtype_for_vocab(self.tokenizer.vocab_size)

    def encode(self, record: RawRecord, input_format: str) -> _EncodedRecord:
        try:
            texts = decode_record(record, input_format, self.json_keys)
        except MalformedRecordError as error:
            return _EncodedRecord(record.path, error.line_number, len(record.payload), None, error.problem)
        tokens = {}
        for key, text in texts.items():
            ids = self.tokenizer.tokenize(text) if text.strip() else []
            if not ids:
                tokens[key] = None
                continue
            if self.append_eod:
                ids.append(self.tokenizer.eod)
            tokens[key] = np.asarray(ids, dtype=self.dtype)
        return _EncodedRecord(record.path, record.line_number, len(record.payload), tokens, None)

    def encode_task(self, task: tuple[str, list[RawRecord]]) -> list[_EncodedRecord]:
        input_format, records = task
        return [self.encode(record, input_format) for record in records]


_worker_encoder: Optional[_DocumentEncoder] = None  # one per worker process, built by the pool initializer


def _init_worker(tokenizer_kwargs: dict, json_keys: Sequence[str], append_eod: bool) -> None:
    global _worker_encoder
    _worker_encoder = _DocumentEncoder(tokenizer_kwargs, json_keys, append_eod)


def _encode_task_in_worker(task: tuple[str, list[RawRecord]]) -> list[_EncodedRecord]:
    return _worker_encoder.encode_task(task)


def _tasks(config: PreprocessConfig) -> Iterator[tuple[str, list[RawRecord]]]:
    for path in config.input_files:
        input_format = resolve_input_format(path, config.input_format)
        records = read_raw_records(path, input_format)
        while batch := list(itertools.islice(records, config.records_per_task)):
            yield input_format, batch


def _validate(config: PreprocessConfig) -> None:
    check_input_files(config.input_files)
    if not config.json_keys:
        raise ValueError("--json-keys needs at least one key")
    if isinstance(config.workers, bool) or not isinstance(config.workers, int) or config.workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {config.workers!r}")
    if config.log_interval < 1:
        raise ValueError(f"--log-interval must be positive, got {config.log_interval}")
    for path in config.input_files:
        if resolve_input_format(path, config.input_format) == "text" and len(config.json_keys) > 1:
            raise ValueError(
                f"{path} is read as plain text, which has one document per block and no keys, but --json-keys "
                f"names {len(config.json_keys)} keys; give one key (it only names the output)"
            )


def preprocess_corpus(config: PreprocessConfig, log: Callable[[str], None] = print) -> PreprocessReport:
    """Tokenize every document of `config.input_files` into one indexed dataset per JSON key."""
    _validate(config)
    encoder = _DocumentEncoder(config.tokenizer_kwargs(), config.json_keys, config.append_eod)
    report = PreprocessReport(input_bytes=sum(os.path.getsize(p) for p in config.input_files))
    for key in config.json_keys:
        report.output_prefixes[key] = config.output_prefix_of(key)
        report.documents_written[key] = report.empty_skipped[key] = report.tokens_written[key] = 0
    start = time.perf_counter()
    bytes_done = 0
    with ExitStack() as stack:
        writers = {
            key: stack.enter_context(IndexedDatasetWriter(prefix, encoder.dtype))
            for key, prefix in report.output_prefixes.items()
        }
        if config.workers == 1:
            results = map(encoder.encode_task, _tasks(config))
        else:
            pool = stack.enter_context(
                multiprocessing.Pool(
                    config.workers, initializer=_init_worker,
                    initargs=(config.tokenizer_kwargs(), config.json_keys, config.append_eod),
                )
            )
            results = pool.imap(_encode_task_in_worker, _tasks(config))
        for encoded in itertools.chain.from_iterable(results):
            report.records_read += 1
            bytes_done += encoded.num_bytes
            if encoded.problem is not None:
                if not config.skip_malformed:
                    raise MalformedRecordError(encoded.path, encoded.line_number, encoded.problem)
                report.malformed_skipped += 1
            else:
                for key, tokens in encoded.tokens.items():
                    if tokens is None:
                        report.empty_skipped[key] += 1
                        continue
                    writers[key].add_document(tokens)
                    report.documents_written[key] += 1
                    report.tokens_written[key] += len(tokens)
            if report.records_read % config.log_interval == 0:
                elapsed = time.perf_counter() - start
                log(
                    f"processed {report.records_read} documents ({report.records_read / elapsed:.0f} docs/s, "
                    f"{bytes_done / 1e6 / elapsed:.2f} MB/s)"
                )
        for key, written in report.documents_written.items():
            if written == 0:
                raise ValueError(
                    f"no documents for key {key!r}: {report.records_read} records read, "
                    f"{report.malformed_skipped} malformed skipped, {report.empty_skipped[key]} empty skipped; "
                    "check --input, --json-keys and --input-format"
                )
    report.seconds = time.perf_counter() - start
    skipped = ", ".join(f"{n} empty '{k}' documents" for k, n in report.empty_skipped.items())
    log(
        f"done: {report.records_read} documents in {report.seconds:.2f} s "
        f"({report.documents_per_second:.0f} docs/s, {report.megabytes_per_second:.2f} MB/s); "
        f"skipped {report.malformed_skipped} malformed records and {skipped}; "
        f"wrote {', '.join(p + '.bin/.idx' for p in report.output_prefixes.values())}"
    )
    return report
