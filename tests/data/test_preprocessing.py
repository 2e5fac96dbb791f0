"""Preprocessing: text -> .bin/.idx -> detokenized text round trips, and every bad input fails clearly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron.data.document_reader import MalformedRecordError
from megatron.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.data.indexed_dataset import IndexedDataset
from megatron.data.preprocessing import PreprocessConfig, preprocess_corpus
from megatron.data.tokenizers import build_tokenizer

from tests.data.corpora import write_jsonl

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_preprocess(tmp_path, input_file, **overrides):
    messages = []
    config = PreprocessConfig(
        input_files=[str(input_file)], output_prefix=str(tmp_path / "out"), **overrides
    )
    report = preprocess_corpus(config, log=messages.append)
    return report, messages


def documents_of(prefix, tokenizer, strip_eod=True):
    dataset = IndexedDataset(prefix)
    texts = []
    for i in range(len(dataset)):
        ids = list(dataset[i])
        if strip_eod:
            assert ids[-1] == tokenizer.eod
            ids = ids[:-1]
        texts.append(tokenizer.detokenize(ids))
    return texts


@pytest.mark.parametrize("workers", [1, 2])
def test_sentencepiece_round_trip(tmp_path, corpus_documents, sentencepiece_model, workers):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_documents)
    report, messages = run_preprocess(
        tmp_path, corpus, tokenizer_type="SentencePieceTokenizer", tokenizer_model=sentencepiece_model,
        append_eod=True, workers=workers, log_interval=50, records_per_task=7,
    )
    tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=sentencepiece_model)
    assert documents_of(str(tmp_path / "out_text_document"), tokenizer) == corpus_documents
    assert report.documents_written == {"text": len(corpus_documents)}
    assert sum(m.startswith("processed ") for m in messages) == len(corpus_documents) // 50
    assert messages[-1].startswith(f"done: {len(corpus_documents)} documents") and "MB/s" in messages[-1]


def test_gpt_dataset_samples_detokenize_to_the_documents(tmp_path, corpus_documents, sentencepiece_model):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_documents)
    run_preprocess(tmp_path, corpus, tokenizer_type="SentencePieceTokenizer", tokenizer_model=sentencepiece_model,
                   append_eod=True, workers=2)
    tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=sentencepiece_model)
    config = GPTDatasetConfig(seq_length=32, seed=3, eod=tokenizer.eod, vocab_size=tokenizer.vocab_size,
                              cache_dir=str(tmp_path / "cache"))
    dataset = GPTDataset("train", IndexedDataset(str(tmp_path / "out_text_document")), (0, len(corpus_documents)),
                         None, config)  # one epoch
    # Undo the sample shuffle, then join the samples (each overlaps the next by one token) into the stream.
    by_position = {int(dataset.shuffle_index[k]): k for k in range(len(dataset))}
    stream = []
    for position in range(len(dataset)):
        stream += dataset[by_position[position]]["tokens"].tolist()
    # Split the stream at EOD: whole documents, in the epoch's (shuffled) document order.
    documents, current = [], []
    for token in stream:
        if token == tokenizer.eod:
            documents.append(tokenizer.detokenize(current))
            current = []
        else:
            current.append(token)
    expected = [corpus_documents[d] for d in dataset.document_index[: len(documents)]]
    assert documents == expected
    assert len(documents) >= len(corpus_documents) - 2  # only the tail shorter than one sample is left out


@pytest.mark.parametrize("workers", [1, 2])
def test_null_tokenizer_text_file_round_trip(tmp_path, workers):
    # Text format: blank-line-separated blocks are documents; lines inside a block stay together.
    text_file = tmp_path / "ids.txt"
    text_file.write_text("1 2 3\n4 5\n\n\n\n6 7 8 9\n   \n10\n")
    run_preprocess(tmp_path, text_file, tokenizer_type="NullTokenizer", vocab_size=50, append_eod=True,
                   workers=workers)
    dataset = IndexedDataset(str(tmp_path / "out_text_document"))
    assert dataset.dtype == np.uint16
    assert [list(dataset[i]) for i in range(len(dataset))] == [[1, 2, 3, 4, 5, 50], [6, 7, 8, 9, 50], [10, 50]]


def test_workers_do_not_change_the_output(tmp_path, corpus_documents, sentencepiece_model):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_documents * 3)
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        config = PreprocessConfig(
            input_files=[corpus], output_prefix=str(out), tokenizer_type="SentencePieceTokenizer",
            tokenizer_model=sentencepiece_model, workers=workers, records_per_task=5,
        )
        preprocess_corpus(config, log=lambda message: None)
        outputs.append([(out.parent / f"w{workers}_text_document{ext}").read_bytes() for ext in (".bin", ".idx")])
    assert outputs[0] == outputs[1]


def test_several_json_keys_give_one_dataset_each(tmp_path):
    corpus = tmp_path / "two_keys.jsonl"
    corpus.write_text('{"text": "1 2", "title": "7"}\n{"text": "3", "title": "8 9"}\n')
    run_preprocess(tmp_path, corpus, tokenizer_type="NullTokenizer", vocab_size=10, json_keys=["text", "title"])
    text = IndexedDataset(str(tmp_path / "out_text_document"))
    title = IndexedDataset(str(tmp_path / "out_title_document"))
    assert [list(text[i]) for i in range(2)] == [[1, 2], [3]]
    assert [list(title[i]) for i in range(2)] == [[7], [8, 9]]


def test_command_line_tool(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", ["1 2 3", "4 5"])
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "preprocess_data.py"), "--input", corpus,
         "--output-prefix", str(tmp_path / "cli"), "--tokenizer-type", "NullTokenizer", "--vocab-size", "8",
         "--append-eod", "--workers", "2", "--log-interval", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "processed 2 documents" in result.stdout and "docs/s" in result.stdout.splitlines()[-1]
    dataset = IndexedDataset(str(tmp_path / "cli_text_document"))
    assert [list(dataset[i]) for i in range(2)] == [[1, 2, 3, 8], [4, 5, 8]]


NULL = dict(tokenizer_type="NullTokenizer", vocab_size=10)


def test_malformed_json_line_names_file_and_line_or_is_skipped_and_counted(tmp_path):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": "1"}\n\n{"text": "2"\n{"text": "3"}\n')
    with pytest.raises(MalformedRecordError, match=r"bad\.jsonl:3: not valid JSON"):
        run_preprocess(tmp_path, corpus, **NULL)
    assert not (tmp_path / "out_text_document.bin").exists()  # a failed run leaves no output
    report, messages = run_preprocess(tmp_path, corpus, skip_malformed=True, **NULL)
    assert report.malformed_skipped == 1 and "skipped 1 malformed" in messages[-1]
    dataset = IndexedDataset(str(tmp_path / "out_text_document"))
    assert [list(dataset[i]) for i in range(len(dataset))] == [[1], [3]]


def test_missing_json_key_names_key_and_line(tmp_path):
    corpus = tmp_path / "keys.jsonl"
    corpus.write_text('{"text": "1"}\n{"content": "2"}\n')
    with pytest.raises(MalformedRecordError, match=r"keys\.jsonl:2: JSON object has no key 'text' .*'content'"):
        run_preprocess(tmp_path, corpus, **NULL)


def test_wrong_key_everywhere_with_skip_is_still_an_error(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", ["1", "2"], key="content")
    with pytest.raises(ValueError, match="no documents for key 'text': 2 records read, 2 malformed skipped"):
        run_preprocess(tmp_path, corpus, skip_malformed=True, **NULL)


def test_empty_documents_are_skipped_and_counted(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", ["1 2", "", "   \n ", "3"])
    report, messages = run_preprocess(tmp_path, corpus, append_eod=True, **NULL)
    assert report.empty_skipped == {"text": 2} and report.documents_written == {"text": 2}
    assert "2 empty 'text' documents" in messages[-1]
    dataset = IndexedDataset(str(tmp_path / "out_text_document"))
    assert [list(dataset[i]) for i in range(len(dataset))] == [[1, 2, 10], [3, 10]]


@pytest.mark.parametrize("input_format, content, line", [
    ("jsonl", b'{"text": "1"}\n{"text": "caf\xe9"}\n', 2),
    ("text", b"1 2\n\n3\n4 \xff 5\n", 4),  # the bad byte is on the second line of the second block
])
def test_non_utf8_bytes_name_file_and_line(tmp_path, input_format, content, line):
    corpus = tmp_path / f"latin1.{input_format}"
    corpus.write_bytes(content)
    expected = rf"latin1\.{input_format}:{line}: byte 0x.. at column \d+ is not valid UTF-8"
    with pytest.raises(MalformedRecordError, match=expected):
        run_preprocess(tmp_path, corpus, input_format=input_format, **NULL)


def test_non_string_value_and_non_object_line_are_malformed(tmp_path):
    corpus = tmp_path / "types.jsonl"
    corpus.write_text('{"text": 5}\n[1, 2]\n{"text": "4"}\n')
    with pytest.raises(MalformedRecordError, match=r"types\.jsonl:1: value of key 'text' is a int"):
        run_preprocess(tmp_path, corpus, **NULL)
    report, _ = run_preprocess(tmp_path, corpus, skip_malformed=True, **NULL)
    assert report.malformed_skipped == 2 and report.documents_written == {"text": 1}


def test_missing_input_and_bad_settings_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        run_preprocess(tmp_path, tmp_path / "nope.jsonl", **NULL)
    corpus = write_jsonl(tmp_path / "c.jsonl", ["1"])
    with pytest.raises(ValueError, match="--workers must be a positive integer"):
        run_preprocess(tmp_path, corpus, workers=0, **NULL)
    text = tmp_path / "c.txt"
    text.write_text("1\n")
    with pytest.raises(ValueError, match="read as plain text"):
        run_preprocess(tmp_path, text, json_keys=["a", "b"], **NULL)
