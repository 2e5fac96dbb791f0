"""A checkpoint of any layout -> the model at the launched tensor-parallel size, with the run's tokenizer.

Generation needs no optimizer, engine or ZeRO: the checkpoint is consolidated once into whole fp32 tensors by
the plain model's names (megatron/checkpointing/consolidate.py: TP shards merged, ZeRO partitions joined,
pipeline names mapped, vocabulary padding stripped; cached next to the checkpoint), and every rank cuts its
TP slice from them by the sharding each parameter declares. So one process can run a TP=2 x PP=2 ZeRO-3
checkpoint, and two processes can run a TP=1 one. The architecture and the tokenizer are the ones stored in
the checkpoint's resolved configuration.
"""

import dataclasses
import os
from dataclasses import dataclass

import torch

from megatron.checkpointing.consolidate import consolidated_weights, resolve_checkpoint_folder
from megatron.checkpointing.hf.export import stored_run_config
from megatron.checkpointing.manifest import read_manifest
from megatron.checkpointing.safe_load import CheckpointError
from megatron.checkpointing.universal_load import tensor_parallel_slice
from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.core.vocab_padding import pad_vocab_size

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: torch.nn.Module          # GPTModel in eval mode, this rank's TP slice
    run_config: object              # the training run's RunConfig (model re-padded for this TP size)
    tokenizer: object
    iteration: int
    folder: str


def checkpoint_tokenizer(run_config):
    """The tokenizer the training run used, rebuilt from its stored configuration."""
    from megatron.data import build_tokenizer

    data, model = run_config.data, run_config.model
    if not (data.data_path or data.train_data_path) and not data.tokenizer_type:
        # Trained on the built-in corpus: its SentencePiece model is in the corpus cache (rebuilt if gone).
        from megatron.data import prepare_builtin_corpus
        from megatron.training.data_setup import BUILTIN_CORPUS_VOCAB, default_cache_dir

        cache_dir = data.data_cache_path or default_cache_dir()
        _, tokenizer_model = prepare_builtin_corpus(os.path.join(cache_dir, "builtin-corpus"), BUILTIN_CORPUS_VOCAB,
                                                    barrier=comm.barrier, rank=comm.get_rank(), log=lambda _: None)
        return build_tokenizer("SentencePieceTokenizer", tokenizer_model=tokenizer_model)
    # NullTokenizer(n) has n text ids plus EOD; the stored vocabulary counts both.
    null_size = model.vocab_size - 1 if data.tokenizer_type == "NullTokenizer" else None
    tokenizer = build_tokenizer(data.tokenizer_type, tokenizer_model=data.tokenizer_model, vocab_file=data.vocab_file,
                                merge_file=data.merge_file, vocab_size=null_size)
    if tokenizer.vocab_size != model.vocab_size:
        raise CheckpointError(f"the checkpoint's model has a vocabulary of {model.vocab_size} but its tokenizer "
                              f"({data.tokenizer_type}) now gives {tokenizer.vocab_size}: the tokenizer files "
                              f"changed since training; restore them")
    return tokenizer


def _consolidate_on_rank0_first(folder: str):
    """Rank 0 converts (and caches) the checkpoint; the others then read the cached conversion."""
    error, result = None, None
    if comm.get_rank() == 0:
        try:
            result = consolidated_weights(folder, log=lambda _: None)
        except Exception as caught:  # every rank must learn of it, or the others wait forever
            error = f"{type(caught).__name__}: {caught}"
    if comm.get_world_size() > 1:
        error = comm.broadcast_object(error, src=0)
    if error is not None:
        raise CheckpointError(f"reading checkpoint {folder} failed: {error}")
    return result if result is not None else consolidated_weights(folder, log=lambda _: None)


def load_model_for_inference(load_dir: str, dtype: str = "fp32") -> LoadedModel:
    """Build the checkpoint's model at TP = this world's size (call ``initialize_model_parallel`` first, PP=1)."""
    from megatron.model import GPTModel

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if ps.get_pipeline_model_parallel_world_size() != 1:
        raise ValueError("generation runs the whole model on every rank group (pipeline size 1); launch it with "
                         "tensor parallelism only, or as one process (a pipeline checkpoint is resharded)")
    folder = resolve_checkpoint_folder(load_dir)
    manifest = read_manifest(folder)
    run_config = stored_run_config(manifest, folder)
    if run_config.moe.enabled:
        raise CheckpointError(f"checkpoint {folder} holds Mixture-of-Experts layers (--num-experts "
                              f"{run_config.moe.experts}); generation from MoE checkpoints is not supported yet")
    tp = ps.get_tensor_model_parallel_world_size()
    model_config = run_config.model
    padded = pad_vocab_size(model_config.vocab_size, model_config.make_vocab_size_divisible_by, tp)
    model_config = dataclasses.replace(model_config, padded_vocab_size=padded)
    run_config = dataclasses.replace(run_config, model=model_config)
    tokenizer = checkpoint_tokenizer(run_config)

    weights, _ = _consolidate_on_rank0_first(folder)
    model = GPTModel(model_config, params_dtype=DTYPES[dtype])
    expected = {name for name, _ in model.named_parameters()}
    if set(weights) != expected:
        missing, unexpected = sorted(expected - set(weights))[:5], sorted(set(weights) - expected)[:5]
        raise CheckpointError(f"checkpoint {folder} does not hold this model's parameters: missing {missing}, "
                              f"unexpected {unexpected}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(tensor_parallel_slice(weights[name], param, name, folder).to(param.dtype))
    model.eval()
    return LoadedModel(model=model, run_config=run_config, tokenizer=tokenizer,
                       iteration=int(manifest["training"]["iteration"]), folder=folder)
