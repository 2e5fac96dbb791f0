"""A small synthetic corpus in Megatron's indexed format, for end-to-end training tests."""

import numpy as np

VOCAB = 127  # NullTokenizer: ids 0..126, EOD = 127, 128 in all


def write_synthetic_corpus(prefix: str, num_documents: int = 400, seed: int = 0, vocab: int = VOCAB):
    """Documents that a tiny model can learn: noisy arithmetic progressions of token ids 0..vocab-1, each
    ended by EOD = vocab (NullTokenizer --vocab-size vocab)."""
    from megatron.data.indexed_dataset import IndexedDatasetWriter

    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for _ in range(num_documents):
            length = int(rng.integers(20, 120))
            start, step = int(rng.integers(0, vocab)), int(rng.integers(1, 5))
            tokens = (start + step * np.arange(length)) % vocab
            noise = rng.random(length) < 0.1
            tokens[noise] = rng.integers(0, vocab, int(noise.sum()))
            writer.add_document(np.append(tokens, vocab))  # each document ends with EOD
    return prefix
