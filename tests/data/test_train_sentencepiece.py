"""tools/train_sentencepiece.py trains a usable model from JSONL and text inputs."""

import os
import subprocess
import sys

from megatron.data.tokenizers import build_tokenizer

from tests.data.corpora import english_documents, write_jsonl

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cli_trains_on_jsonl_and_text_files(tmp_path):
    documents = english_documents(80)
    jsonl = write_jsonl(tmp_path / "a.jsonl", documents[:40], key="body")
    text = tmp_path / "b.txt"
    text.write_text("\n\n".join(documents[40:]))
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "train_sentencepiece.py"), "--input", jsonl, str(text),
         "--json-keys", "body", "--model-prefix", str(tmp_path / "tok"), "--vocab-size", "800",
         "--model-type", "unigram", "--character-coverage", "1.0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=str(tmp_path / "tok.model"))
    assert tokenizer.vocab_size == 800
    num_tokens = 0
    for document in documents:
        ids = tokenizer.tokenize(document)
        assert tokenizer.detokenize(ids) == document
        num_tokens += len(ids)
    # Learned pieces, not byte fallback: under half a token per byte (0.31 measured).
    assert num_tokens < 0.5 * sum(len(d.encode()) for d in documents)


def test_cli_explains_a_vocab_too_large_for_the_corpus(tmp_path):
    corpus = write_jsonl(tmp_path / "tiny.jsonl", ["just a few words here"])
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "train_sentencepiece.py"), "--input", corpus,
         "--model-prefix", str(tmp_path / "tok"), "--vocab-size", "5000"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "too small for vocab_size=5000" in result.stderr and "lower --vocab-size" in result.stderr
