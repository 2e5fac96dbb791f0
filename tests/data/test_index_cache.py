"""Index caching: reused while inputs are unchanged, rebuilt when any input changes, built once across ranks."""

import multiprocessing
import threading

import numpy as np

from megatron.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter

EOD = 0


def write_dataset(prefix, seed):
    rng = np.random.RandomState(seed)
    with IndexedDatasetWriter(str(prefix), np.uint16) as writer:
        for _ in range(40):
            writer.add_document(np.append(rng.randint(1, 100, size=rng.randint(1, 30)), EOD))
    return IndexedDataset(str(prefix))


def build(indexed, cache_dir, seq_length=8, seed=1, num_samples=100, document_range=(0, 30), **kwargs):
    config = GPTDatasetConfig(seq_length=seq_length, seed=seed, eod=EOD, cache_dir=str(cache_dir))
    return GPTDataset("train", indexed, document_range, num_samples, config, **kwargs)


def cache_mtimes(cache_dir):
    return {path.name: path.stat().st_mtime_ns for path in cache_dir.iterdir() if path.suffix in (".npy", ".json")}


def test_indices_are_reused_until_an_input_changes(tmp_path):
    cache = tmp_path / "cache"
    indexed = write_dataset(tmp_path / "d", seed=0)
    first = build(indexed, cache)
    assert first.indices_were_built
    files_after_first = cache_mtimes(cache)
    assert len(files_after_first) == 4  # three index arrays and the description

    again = build(indexed, cache)
    assert not again.indices_were_built
    assert cache_mtimes(cache) == files_after_first  # nothing rewritten
    np.testing.assert_array_equal(again.shuffle_index, first.shuffle_index)

    for change in [dict(seed=2), dict(seq_length=9), dict(num_samples=101), dict(document_range=(0, 29))]:
        assert build(indexed, cache, **change).indices_were_built, change
        assert not build(indexed, cache, **change).indices_were_built, change

    # Same file contents rewritten (new mtime): the content hash matches, so the cache is reused.
    rewritten = write_dataset(tmp_path / "d", seed=0)
    assert not build(rewritten, cache).indices_were_built
    # Different contents under the same prefix: rebuilt.
    changed = write_dataset(tmp_path / "d", seed=1)
    assert build(changed, cache).indices_were_built
    assert not any(".tmp-" in path.name for path in cache.iterdir())  # atomic writes leave no temporaries


def _build_in_child(prefix, cache_dir, start, results):
    start.wait()  # all processes race for the same entry
    dataset = build(IndexedDataset(prefix), cache_dir)
    results.put((dataset.indices_were_built, np.asarray(dataset.shuffle_index).tolist()))


def test_concurrent_processes_build_once_and_agree(tmp_path):
    write_dataset(tmp_path / "d", seed=0)
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(3), context.Queue()
    processes = [
        context.Process(target=_build_in_child, args=(str(tmp_path / "d"), str(tmp_path / "cache"), start, results))
        for _ in range(3)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sorted(built for built, _ in outcomes) == [False, False, True]
    assert outcomes[0][1] == outcomes[1][1] == outcomes[2][1]


def test_with_a_barrier_rank_zero_builds_and_the_others_load(tmp_path):
    indexed = write_dataset(tmp_path / "d", seed=0)
    barrier = threading.Barrier(3, timeout=60)
    built = {}

    def rank_main(rank):
        built[rank] = build(indexed, tmp_path / "cache", barrier=barrier.wait, rank=rank).indices_were_built

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in (2, 1, 0)]  # rank 0 starts last
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert built == {0: True, 1: False, 2: False}
