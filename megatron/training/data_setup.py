"""Tokenizer and data iterators for training: the user's corpora, or the built-in corpus when none is given."""

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from megatron.config import RunConfig
from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.data import (build_pretraining_data_loader, build_tokenizer, build_train_valid_test_datasets,
                           prepare_builtin_corpus, unigram_entropy)
from megatron.data.context_parallel_batch import context_parallel_micro_batch

BUILTIN_CORPUS_VOCAB = 8000


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "megatron-ds")


@dataclass
class TrainingData:
    tokenizer: object
    train_dataset: object
    valid_dataset: Optional[object]
    data_prefix: object
    micro_batch_size: int
    num_workers: int
    context_parallel_algorithm: Optional[str] = None  # "ring" or "ulysses" when CP > 1

    def _loader(self, dataset, consumed_samples):
        # The ranks of one CP group share a data-parallel rank, so they read the same micro-batches.
        loader = build_pretraining_data_loader(dataset, consumed_samples, self.micro_batch_size,
                                               ps.get_data_parallel_rank(), ps.get_data_parallel_world_size(),
                                               num_workers=self.num_workers)
        if self.context_parallel_algorithm is None:
            return loader
        cp_size, cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
        # iter() now, not at the first batch: creating the DataLoader iterator draws from torch's RNG, and
        # resume restores the RNG state after that draw.
        batches = iter(loader)
        return map(lambda batch: context_parallel_micro_batch(batch, cp_size, cp_rank,
                                                              self.context_parallel_algorithm), batches)

    def train_batches(self, consumed_samples: int) -> Iterator[dict]:
        """This DP rank's micro-batches, continuing after ``consumed_samples`` global samples (exact resume)."""
        return iter(self._loader(self.train_dataset, consumed_samples))

    @property
    def valid_batches(self) -> Optional[Callable[[], Iterator[dict]]]:
        """Every evaluation starts from the first validation sample, so evaluations are comparable."""
        if self.valid_dataset is None:
            return None
        return lambda: iter(self._loader(self.valid_dataset, 0))


def build_training_data(config: RunConfig, printer=print) -> TrainingData:
    data, training = config.data, config.training
    rank = comm.get_rank()
    if data.data_path or data.train_data_path:
        tokenizer = build_tokenizer(data.tokenizer_type, tokenizer_model=data.tokenizer_model,
                                    vocab_file=data.vocab_file, merge_file=data.merge_file,
                                    vocab_size=config.model.vocab_size)
        data_path = list(data.data_path or data.train_data_path)
    else:
        cache_dir = data.data_cache_path or default_cache_dir()
        printer(f"> no --data-path: using the built-in English corpus (Python's documentation), cached in "
                f"{cache_dir}")
        prefix, tokenizer_model = prepare_builtin_corpus(os.path.join(cache_dir, "builtin-corpus"),
                                                         BUILTIN_CORPUS_VOCAB, barrier=comm.barrier, rank=rank,
                                                         log=printer)
        tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=tokenizer_model)
        data_path = [prefix]
        printer(f"> built-in corpus unigram entropy: {unigram_entropy(prefix):.3f} nats/token (the loss of a model "
                f"that learns token frequencies only; training should go well below it)")

    global_batch = config.deepspeed_config["train_batch_size"]
    evaluations = training.train_iters // training.eval_interval + 1 if training.eval_interval else 0
    num_samples = [training.train_iters * global_batch, evaluations * training.eval_iters * global_batch, 0]
    def build(paths, split, samples):
        return build_train_valid_test_datasets(
            paths, split, config.model.seq_length, training.seed, samples, tokenizer,
            eod_mask_loss=data.eod_mask_loss, reset_position_ids=data.reset_position_ids,
            reset_attention_mask=data.reset_attention_mask, cache_dir=data.data_cache_path and
            os.path.join(data.data_cache_path, "index-cache"), barrier=comm.barrier, rank=rank)

    if data.train_data_path:
        # Megatron's separate per-split paths: every document of each path belongs to its split.
        train = build(list(data.train_data_path), "1,0,0", [num_samples[0], 0, 0])[0]
        valid = build(list(data.valid_data_path), "0,1,0", [0, num_samples[1], 0])[1] \
            if data.valid_data_path and num_samples[1] else None
    else:
        train, valid, _ = build(data_path, data.split, num_samples)
    if train is None and not training.skip_train:
        raise ValueError(f"the training split of {data_path} is empty: check --split {data.split!r} and the data")
    return TrainingData(tokenizer=tokenizer, train_dataset=train, valid_dataset=valid if evaluations else None,
                        data_prefix=data_path, micro_batch_size=training.micro_batch_size,
                        num_workers=data.num_workers,
                        context_parallel_algorithm=_context_parallel_algorithm(config))


def _context_parallel_algorithm(config: RunConfig) -> Optional[str]:
    parallel = config.parallel
    if parallel.context_parallel_axis_size == 1:
        return None
    return "ring" if parallel.context_parallel_size > 1 else "ulysses"
