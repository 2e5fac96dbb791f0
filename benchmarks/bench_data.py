"""Data pipeline throughput: preprocessing (MB/s, docs/s at 1 and 2 workers) and index building for 1M documents.

    python benchmarks/bench_data.py [--corpus-mb 30] [--workdir /tmp/bench_data]

Prints markdown tables; nothing is asserted. The corpus is Python's help topics (English) shuffled into
documents of a few hundred to a few thousand characters, tokenized with the built-in corpus' SentencePiece model.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from megatron.data.blended_dataset import build_blending_indices  # noqa: E402
from megatron.data.builtin_corpus import collect_builtin_documents, prepare_builtin_corpus  # noqa: E402
from megatron.data.gpt_sample_index import (  # noqa: E402
    build_document_index,
    build_sample_index,
    build_shuffle_index,
    plan_epochs,
)
from megatron.data.gpt_dataset import GPTDataset, GPTDatasetConfig  # noqa: E402
from megatron.data.indexed_dataset import IndexedDataset, encode_index  # noqa: E402
from megatron.data.preprocessing import PreprocessConfig, preprocess_corpus  # noqa: E402


def write_corpus(path: str, megabytes: float) -> int:
    documents = collect_builtin_documents()
    rng = random.Random(0)
    written = count = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < megabytes * 1e6:
            line = json.dumps({"text": rng.choice(documents)}) + "\n"
            f.write(line)
            written += len(line.encode())
            count += 1
    return count


def bench_preprocessing(workdir: str, megabytes: float, tokenizer_model: str) -> list:
    corpus = os.path.join(workdir, "corpus.jsonl")
    write_corpus(corpus, megabytes)
    rows = []
    for workers in (1, 2):
        config = PreprocessConfig(
            input_files=[corpus], output_prefix=os.path.join(workdir, f"out{workers}"),
            tokenizer_type="SentencePieceTokenizer", tokenizer_model=tokenizer_model, append_eod=True,
            workers=workers, log_interval=10**9,
        )
        report = preprocess_corpus(config, log=lambda message: None)
        rows.append((workers, report.input_bytes / 1e6, report.records_read, report.tokens_written["text"],
                     report.seconds, report.megabytes_per_second, report.documents_per_second))
    return rows


def bench_indices(num_documents: int, seq_length: int, epochs: float) -> list:
    rng = np.random.RandomState(0)
    sizes = rng.randint(16, 1024, size=num_documents).astype(np.int32)  # ~520 tokens per document
    documents = np.arange(num_documents, dtype=np.int32)
    tokens_per_epoch = int(sizes.sum(dtype=np.int64))
    num_samples = int(epochs * tokens_per_epoch / seq_length)
    timings = []
    start = time.perf_counter()
    plan = plan_epochs(tokens_per_epoch, seq_length, num_samples)
    shuffler = np.random.RandomState(1234)
    document_index = build_document_index(documents, plan.num_epochs, shuffler, plan.separate_last_epoch)
    timings.append(("document index", len(document_index), time.perf_counter() - start))
    start = time.perf_counter()
    sample_index = build_sample_index(sizes, document_index, seq_length)
    timings.append(("sample index", len(sample_index) - 1, time.perf_counter() - start))
    start = time.perf_counter()
    shuffle_index = build_shuffle_index(plan.num_samples_to_shuffle_jointly, len(sample_index) - 1, shuffler)
    timings.append(("shuffle index", len(shuffle_index), time.perf_counter() - start))
    start = time.perf_counter()
    build_blending_indices([0.5, 0.3, 0.2], 1_000_000)
    timings.append(("blending schedule (3 datasets)", 1_000_000, time.perf_counter() - start))
    return sizes, timings, num_samples, plan.num_epochs


def bench_dataset_end_to_end(workdir: str, sizes: np.ndarray, seq_length: int, num_samples: int) -> list:
    """GPTDataset construction: hash the .idx, build, save the .npy cache; then a cached reload."""
    prefix = os.path.join(workdir, "synthetic")
    with open(prefix + ".idx", "wb") as f:
        f.write(encode_index(np.uint16, sizes, np.arange(len(sizes) + 1)))
    # A sparse .bin of the right size: the reader checks its length, and building indices never reads tokens.
    with open(prefix + ".bin", "wb") as f:
        f.truncate(int(sizes.sum(dtype=np.int64)) * 2)
    config = GPTDatasetConfig(seq_length=seq_length, seed=1234, eod=0, cache_dir=os.path.join(workdir, "cache"))
    rows = []
    for label in ("GPTDataset, first build (hash .idx, build, save .npy)", "GPTDataset, cached (load .npy)"):
        start = time.perf_counter()
        dataset = GPTDataset("train", IndexedDataset(prefix), (0, len(sizes)), num_samples, config)
        rows.append((label, len(dataset), time.perf_counter() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus-mb", type=float, default=30.0)
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--epochs", type=float, default=2.5, help="samples requested, in epochs of the documents")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_data_")
    os.makedirs(workdir, exist_ok=True)
    try:
        run(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: str) -> None:

    _, tokenizer_model = prepare_builtin_corpus(os.path.join(workdir, "builtin"), log=lambda message: None)
    print(f"## Preprocessing ({os.cpu_count()} cores, SentencePiece BPE 8000, JSONL of English documents)\n")
    print("| workers | input MB | documents | tokens | seconds | MB/s | docs/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for workers, megabytes, docs, tokens, seconds, mb_s, docs_s in bench_preprocessing(
        workdir, args.corpus_mb, tokenizer_model
    ):
        print(f"| {workers} | {megabytes:.1f} | {docs} | {tokens} | {seconds:.2f} | {mb_s:.2f} | {docs_s:.0f} |")

    sizes, timings, num_samples, epochs = bench_indices(args.documents, args.seq_length, args.epochs)
    timings += bench_dataset_end_to_end(workdir, sizes, args.seq_length, num_samples)
    print(f"\n## Index building: {args.documents} documents, seq_length {args.seq_length}, "
          f"{num_samples} samples requested ({epochs} epochs)\n")
    print("| index | entries | seconds |")
    print("|---|---:|---:|")
    for name, entries, seconds in timings:
        print(f"| {name} | {entries} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
