"""Tokenizers: GPT-2 BPE against reference implementations, round trips, build_tokenizer, vocab padding."""

import json
import os

import pytest

from megatron.data.tokenizers import NullTokenizer, build_tokenizer, pad_vocab_size

from tests.data.corpora import SAMPLE_DOCUMENTS, english_documents

REFERENCE_STRINGS = SAMPLE_DOCUMENTS + [
    "Hello world",
    "hello   world\n\n\nnew paragraph\r\nwindows line",
    "Ωmega ЖЖЖ ½ ² ① ٣ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",  # letters and numbers outside ASCII (\p{L}, \p{N})
    "I'M sure they'LL say it's 'fine' — won't they?",
    "trailing space ",
    "",
]


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    """vocab.json + merges.txt of a byte-level BPE trained locally by the `tokenizers` package."""
    from tokenizers import ByteLevelBPETokenizer

    reference = ByteLevelBPETokenizer()
    reference.train_from_iterator(
        english_documents(200) + SAMPLE_DOCUMENTS, vocab_size=700, min_frequency=2, special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    directory = tmp_path_factory.mktemp("gpt2")
    vocab_file, merge_file = reference.save_model(str(directory))
    return vocab_file, merge_file


def test_gpt2_bpe_matches_tokenizers_package(gpt2_files):
    from tokenizers import ByteLevelBPETokenizer

    vocab_file, merge_file = gpt2_files
    ours = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab_file, merge_file=merge_file)
    reference = ByteLevelBPETokenizer(vocab_file, merge_file)
    for text in REFERENCE_STRINGS:
        ids = ours.tokenize(text)
        assert ids == reference.encode(text).ids, text
        assert ours.detokenize(ids) == text
    with open(vocab_file) as f:
        vocab = json.load(f)
    assert ours.vocab_size == len(vocab)
    assert ours.eod == vocab["<|endoftext|>"]


def test_gpt2_bpe_matches_transformers_gpt2_tokenizer(gpt2_files):
    from transformers import GPT2Tokenizer

    vocab_file, merge_file = gpt2_files
    ours = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab_file, merge_file=merge_file)
    # A local directory holding vocab.json + merges.txt: nothing is downloaded.
    reference = GPT2Tokenizer.from_pretrained(os.path.dirname(vocab_file))
    for text in REFERENCE_STRINGS:
        assert ours.tokenize(text) == reference.encode(text), text


def test_sentencepiece_round_trips_text_exactly(sentencepiece_model):
    tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=sentencepiece_model)
    assert tokenizer.vocab_size == 600
    assert (tokenizer.eod, tokenizer.bos, tokenizer.pad) == (2, 1, 3)
    # Byte fallback and identity normalization: even characters never seen in training come back unchanged.
    for text in REFERENCE_STRINGS + ["never seen: ꙮ 𓂀 ∰"]:
        assert tokenizer.detokenize(tokenizer.tokenize(text)) == text


def test_hf_tokenizer_reads_local_tokenizer_json(tmp_path, gpt2_files):
    from tokenizers import ByteLevelBPETokenizer

    reference = ByteLevelBPETokenizer(*gpt2_files)
    reference.save(str(tmp_path / "tokenizer.json"))
    ours = build_tokenizer("HFTokenizer", tokenizer_model=str(tmp_path))  # a directory holding tokenizer.json
    for text in REFERENCE_STRINGS:
        assert ours.tokenize(text) == reference.encode(text).ids
        assert ours.detokenize(ours.tokenize(text)) == text
    assert ours.eod == reference.token_to_id("<|endoftext|>")


def test_null_tokenizer_reads_integers_and_puts_eod_after_the_vocab():
    tokenizer = build_tokenizer("NullTokenizer", vocab_size=100)
    assert tokenizer.tokenize("5 17  99\n0") == [5, 17, 99, 0]
    assert tokenizer.detokenize([5, 17, 99]) == "5 17 99"
    assert (tokenizer.eod, tokenizer.vocab_size) == (100, 101)
    with pytest.raises(ValueError, match="outside"):
        tokenizer.tokenize("3 100")
    with pytest.raises(ValueError, match="space-separated integers"):
        tokenizer.tokenize("3 cats")
    with pytest.raises(ValueError, match="positive integer"):
        NullTokenizer(0)


def test_build_tokenizer_names_the_missing_argument_or_file(tmp_path):
    with pytest.raises(ValueError, match="needs --tokenizer-model"):
        build_tokenizer("SentencePieceTokenizer")
    with pytest.raises(FileNotFoundError, match="missing.model"):
        build_tokenizer("SentencePieceTokenizer", tokenizer_model=str(tmp_path / "missing.model"))
    with pytest.raises(ValueError, match="needs --merge-file"):
        build_tokenizer("GPT2BPETokenizer", vocab_file="vocab.json")
    with pytest.raises(FileNotFoundError, match="--vocab-file"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(tmp_path / "v.json"), merge_file=str(tmp_path / "m.txt"))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        build_tokenizer("HFTokenizer", tokenizer_model=str(tmp_path))
    with pytest.raises(ValueError, match="needs --vocab-size"):
        build_tokenizer("NullTokenizer")
    with pytest.raises(ValueError, match="unknown tokenizer type 'BertTokenizer'"):
        build_tokenizer("BertTokenizer")


@pytest.mark.parametrize(
    "vocab, divisible_by, tp, expected",
    [(50257, 128, 1, 50304), (50257, 128, 2, 50432), (32000, 128, 8, 32768), (1024, 128, 4, 1024), (1, 1, 1, 1)],
)
def test_pad_vocab_size_rounds_up_to_divisible_by_times_tp(vocab, divisible_by, tp, expected):
    assert pad_vocab_size(vocab, divisible_by, tp) == expected


def test_pad_vocab_size_rejects_nonpositive_values():
    with pytest.raises(ValueError, match="tensor_model_parallel_size"):
        pad_vocab_size(100, 128, 0)
