"""The built-in corpus: built once even when ranks race, cached, and made of English text."""

import collections
import math
import multiprocessing
import os
import re

from megatron.data.builtin_corpus import prepare_builtin_corpus, unigram_entropy
from megatron.data.dataset_builder import build_train_valid_test_datasets
from megatron.data.indexed_dataset import IndexedDataset
from megatron.data.tokenizers import build_tokenizer

COMMON_ENGLISH_WORDS = {"the", "of", "to", "a", "and", "is", "in", "that", "it", "for", "be", "an", "or"}


def _prepare_in_child(cache_dir, start, results):
    messages = []
    start.wait()
    paths = prepare_builtin_corpus(cache_dir, log=messages.append)
    results.put((paths, any(m.startswith("built the built-in corpus") for m in messages)))


def test_builtin_corpus_builds_once_then_hits_the_cache_and_reads_as_english(tmp_path):
    cache_dir = str(tmp_path / "corpus")
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(2), context.Queue()
    ranks = [context.Process(target=_prepare_in_child, args=(cache_dir, start, results)) for _ in range(2)]
    for rank in ranks:
        rank.start()
    outcomes = [results.get(timeout=120) for _ in ranks]
    for rank in ranks:
        rank.join(timeout=60)
        assert rank.exitcode == 0
    assert sorted(built for _, built in outcomes) == [False, True]  # exactly one rank built it
    assert outcomes[0][0] == outcomes[1][0]
    data_prefix, model_file = outcomes[0][0]

    stamp = os.path.join(os.path.dirname(data_prefix), "stamp.json")
    stamp_mtime = os.stat(stamp).st_mtime_ns
    messages = []
    assert prepare_builtin_corpus(cache_dir, log=messages.append) == (data_prefix, model_file)
    assert messages == [] and os.stat(stamp).st_mtime_ns == stamp_mtime  # a cache hit: nothing rebuilt

    tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=model_file)
    assert tokenizer.vocab_size == 8000
    train, valid, _ = build_train_valid_test_datasets(
        data_prefix, "969,30,1", seq_length=256, seed=1234, train_valid_test_num_samples=[32, 8, 0],
        tokenizer=tokenizer, cache_dir=str(tmp_path / "indices"),
    )
    for dataset in (train, valid):
        text = " ".join(tokenizer.detokenize(dataset[k]["tokens"].tolist()) for k in range(8))
        words = re.findall(r"[A-Za-z]+", text.lower())
        assert len(words) > 500
        assert sum(word in COMMON_ENGLISH_WORDS for word in words) / len(words) > 0.1, text[:500]
        assert sum(c.isascii() for c in text) / len(text) > 0.95


def test_unigram_entropy_is_the_entropy_of_token_frequencies(tmp_path):
    from megatron.data.indexed_dataset import IndexedDatasetWriter
    import numpy as np

    with IndexedDatasetWriter(str(tmp_path / "d"), np.uint16) as writer:
        writer.add_document(np.array([1, 1, 2, 3]))
        writer.add_document(np.array([1, 2, 7, 7]))
    counts = collections.Counter([1, 1, 2, 3, 1, 2, 7, 7])
    expected = -sum(n / 8 * math.log(n / 8) for n in counts.values())
    assert abs(unigram_entropy(str(tmp_path / "d")) - expected) < 1e-12
    assert len(IndexedDataset(str(tmp_path / "d"))) == 2
