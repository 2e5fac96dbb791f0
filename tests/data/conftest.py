"""Shared fixtures of the data tests: a small corpus and a SentencePiece model trained on it."""

import pytest

from tests.data.corpora import SAMPLE_DOCUMENTS, english_documents, write_jsonl


@pytest.fixture(scope="session")
def corpus_documents():
    return SAMPLE_DOCUMENTS + english_documents()


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory, corpus_documents):
    """A small BPE model (vocab 600) trained on the test corpus; trains in well under a second."""
    from megatron.data.tokenizers.sentencepiece_training import train_sentencepiece

    directory = tmp_path_factory.mktemp("spm")
    corpus = write_jsonl(directory / "corpus.jsonl", corpus_documents)
    return train_sentencepiece([corpus], str(directory / "tok"), 600, log=lambda message: None)
