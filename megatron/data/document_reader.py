"""Reading raw documents from JSONL or plain-text files, with errors that name the file and line.

Formats:
- `jsonl`: one JSON object per line; the document text is the string under each requested key. Blank lines are
  ignored.
- `text`: documents are blocks of lines separated by one or more blank (whitespace-only) lines; a document's
  text is its lines joined with "\\n" (line breaks inside a paragraph block are kept, the separating blank
  lines are not). This suits books and docs dumps where paragraphs are the natural unit.

Reading (`read_raw_records`) only splits bytes; decoding (`decode_record`) does UTF-8 and JSON, so that the
expensive part can run in worker processes while errors still point at the right file and line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

INPUT_FORMATS = ("jsonl", "text")
_TEXT_EXTENSIONS = (".txt", ".text")


class MalformedRecordError(ValueError):
    """A record that cannot be turned into documents; `--skip-malformed` skips these instead of failing."""

    def __init__(self, path: str, line_number: int, problem: str):
        super().__init__(f"{path}:{line_number}: {problem}")
        self.path = path
        self.line_number = line_number
        self.problem = problem


@dataclass(frozen=True)
class RawRecord:
    path: str
    line_number: int  # 1-based number of the record's first line
    payload: bytes


def resolve_input_format(path: str, input_format: str = "auto") -> str:
    """`auto` means text for .txt/.text files and JSONL for everything else (Megatron-LM's only format)."""
    if input_format in INPUT_FORMATS:
        return input_format
    if input_format != "auto":
        raise ValueError(f"input format must be one of {('auto',) + INPUT_FORMATS}, got {input_format!r}")
    return "text" if path.lower().endswith(_TEXT_EXTENSIONS) else "jsonl"


def check_input_files(paths: Sequence[str]) -> None:
    if not paths:
        raise ValueError("no input files given (--input)")
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file {path!r} (--input) does not exist")


def read_raw_records(path: str, input_format: str) -> Iterator[RawRecord]:
    """Yield the undecoded records of one file in order: JSONL lines, or blank-line-separated text blocks."""
    with open(path, "rb") as f:
        if input_format == "jsonl":
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    yield RawRecord(path, line_number, line)
            return
        block, block_start = [], 0
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                if not block:
                    block_start = line_number
                block.append(line)
            elif block:
                yield RawRecord(path, block_start, b"".join(block))
                block = []
        if block:
            yield RawRecord(path, block_start, b"".join(block))


def _decode_utf8(record: RawRecord) -> str:
    try:
        return record.payload.decode("utf-8")
    except UnicodeDecodeError as error:
        bad_line = record.line_number + record.payload.count(b"\n", 0, error.start)
        column = error.start - (record.payload.rfind(b"\n", 0, error.start) + 1) + 1
        raise MalformedRecordError(
            record.path,
            bad_line,
            f"byte 0x{record.payload[error.start]:02x} at column {column} is not valid UTF-8; re-encode the file "
            "as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or pass --skip-malformed to skip such records",
        ) from None


def decode_record(record: RawRecord, input_format: str, json_keys: Sequence[str]) -> dict[str, str]:
    """Document text under each key. For text files there is one document per record, stored under
    `json_keys[0]` so that outputs are named alike for both formats."""
    text = _decode_utf8(record)
    if record.line_number == 1 and text.startswith("\ufeff"):  # the byte-order mark some editors write
        text = text[1:]
    if input_format == "text":
        # The block's lines are all non-blank; drop only the final line break (and Windows "\r").
        return {json_keys[0]: text.replace("\r\n", "\n").rstrip("\n")}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        raise MalformedRecordError(
            record.path,
            record.line_number,
            f"not valid JSON ({error.msg} at column {error.colno}); each line must be one JSON object, "
            "or pass --skip-malformed to skip such lines",
        ) from None
    if not isinstance(obj, dict):
        raise MalformedRecordError(
            record.path, record.line_number, f"expected a JSON object, got a JSON {type(obj).__name__}"
        )
    documents = {}
    for key in json_keys:
        if key not in obj:
            raise MalformedRecordError(
                record.path,
                record.line_number,
                f"JSON object has no key {key!r} (its keys: {sorted(obj)[:10]}); choose the key with "
                "--json-keys, or pass --skip-malformed to skip such lines",
            )
        value = obj[key]
        if not isinstance(value, str):
            raise MalformedRecordError(
                record.path, record.line_number, f"value of key {key!r} is a {type(value).__name__}, not a string"
            )
        documents[key] = value
    return documents
