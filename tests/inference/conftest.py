import pytest


@pytest.fixture(scope="session")
def english_corpus(tmp_path_factory):
    """Python's help texts, tokenised with a 600-piece SentencePiece model trained here (about a second)."""
    from megatron.data.preprocessing import PreprocessConfig, preprocess_corpus
    from megatron.data.tokenizers.sentencepiece_training import train_sentencepiece
    from tests.data.corpora import english_documents, write_jsonl

    directory = tmp_path_factory.mktemp("inference-corpus")
    jsonl = write_jsonl(directory / "corpus.jsonl", english_documents(400))
    model = train_sentencepiece([jsonl], str(directory / "tok"), 600, log=lambda message: None)
    preprocess_corpus(PreprocessConfig([jsonl], str(directory / "english"), "SentencePieceTokenizer",
                                       tokenizer_model=model, append_eod=True), log=lambda message: None)
    return {"prefix": str(directory / "english_text_document"), "tokenizer_model": model,
            "cache": str(directory / "cache")}
