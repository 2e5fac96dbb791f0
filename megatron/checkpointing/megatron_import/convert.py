"""A Megatron-DeepSpeed / Megatron-LM checkpoint folder -> ``<save>/global_step0`` that training can --load.

Weights only: a Megatron folder's optimizer state is laid out by its own parameter groups and ZeRO partitions,
which do not map onto this model's (a ds_to_universal folder's does: ``--load`` it directly to resume, see
direct_load.py), so this import starts at iteration 0 and training continues from it with
``--finetune`` (another TP/PP/ZeRO layout adds ``--universal-checkpoint``). The tokenizer comes from the
flags given, else from the paths in the source's pickled arguments; its files are copied to
``<save>/tokenizer`` and its fingerprint is recorded, so a later resume checks it.
"""

import os
from typing import Optional

from megatron.checkpointing.megatron_import.arguments import QKV_ORDERS, model_fields, parallel_sizes, qkv_order
from megatron.checkpointing.megatron_import.merge import canonical_names, whole_weights
from megatron.checkpointing.megatron_import.sources import (open_megatron_checkpoint, rank_states,
                                                            universal_optimizer_state, universal_pipeline_names)
from megatron.checkpointing.safe_load import CheckpointError


def _tokenizer_settings(args: dict, overrides: dict) -> dict:
    from megatron.config.legacy_flags import TOKENIZER_NAMES

    settings = {key: overrides.get(key) or args.get(key) for key in
                ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file")}
    if not settings["tokenizer_type"] and settings["vocab_file"]:
        settings["tokenizer_type"] = "GPT2BPETokenizer"  # Megatron-DeepSpeed's default
    settings["tokenizer_type"] = TOKENIZER_NAMES.get(settings["tokenizer_type"], settings["tokenizer_type"])
    return settings


def _files_exist(settings: dict) -> bool:
    paths = [settings[key] for key in ("tokenizer_model", "vocab_file", "merge_file") if settings[key]]
    return bool(settings["tokenizer_type"]) and bool(paths) and all(os.path.exists(path) for path in paths)


def _carry_tokenizer(settings: dict, save_dir: str, given: bool, log):
    """(tokenizer or None, settings pointing at the copies in <save>/tokenizer)."""
    from megatron.checkpointing.hf.tokenizer_files import export_tokenizer
    from megatron.data import build_tokenizer

    if not _files_exist(settings):
        if given:
            raise CheckpointError(f"the tokenizer flags name files that do not exist ({settings}); pass existing "
                                  f"--tokenizer-model / --vocab-file / --merge-file")
        log(f"> the source's tokenizer files ({settings}) are not here: no tokenizer carried; the vocabulary "
            f"is the source's padded size. Pass --tokenizer-type and its files to carry one")
        return None, {}
    target = os.path.join(save_dir, "tokenizer")
    os.makedirs(target, exist_ok=True)
    written = export_tokenizer(target, settings["tokenizer_type"], tokenizer_model=settings["tokenizer_model"],
                               vocab_file=settings["vocab_file"], merge_file=settings["merge_file"])
    tokenizer = build_tokenizer(settings["tokenizer_type"], tokenizer_model=settings["tokenizer_model"],
                                vocab_file=settings["vocab_file"], merge_file=settings["merge_file"])
    log(f"> tokenizer {settings['tokenizer_type']} carried: {', '.join(os.path.basename(p) for p in written)} "
        f"in {target}")
    return tokenizer, settings


def read_whole_weights(source, fields: dict, model, order: str, state_key: str = "fp32"):
    """Every tensor of ``source`` merged over its TP/PP ranks, in our names (vocabulary still padded);
    ``state_key`` exp_avg / exp_avg_sq reads a universal source's Adam moments through the same mapping."""
    tp, pp = parallel_sizes(source.args)
    if source.kind == "megatron-lm" and fields["num_layers"] % pp:
        raise CheckpointError(f"{source.folder}: {fields['num_layers']} layers over {pp} pipeline stages is an "
                              f"uneven split; importing one is not implemented")
    layers_per_stage = fields["num_layers"] // pp
    ranks = {}
    for pp_rank, tp_rank, state in rank_states(source, state_key):
        pipeline_names = source.kind == "megds-pipeline" or (source.kind == "megds-universal"
                                                             and universal_pipeline_names(state))
        offset = 0 if pipeline_names else pp_rank * layers_per_stage
        ranks[(pp_rank, tp_rank)] = canonical_names(state, offset, f"{source.folder} (stage {pp_rank}, tensor rank "
                                                    f"{tp_rank})", pipeline_files=pipeline_names)
    if source.kind == "megds-universal":  # whole tensors; only blocked QKV rows need the ranks they came from
        return whole_weights(ranks, model, order, source.folder, merged_tp=tp)
    found_tp = 1 + max(rank for _, rank in ranks)
    if found_tp != tp:
        raise CheckpointError(f"{source.folder}: the arguments say tensor_model_parallel_size={tp} but files of "
                              f"{found_tp} tensor ranks are there: the checkpoint is incomplete or mixed")
    return whole_weights(ranks, model, order, source.folder)


def convert_megatron_checkpoint(load_dir: str, save_dir: str, *, tokenizer_type: Optional[str] = None,
                                tokenizer_model: Optional[str] = None, vocab_file: Optional[str] = None,
                                merge_file: Optional[str] = None, qkv_row_order: Optional[str] = None,
                                log=print) -> str:
    """Convert on an initialised single-rank world; returns the written folder. ``qkv_row_order`` overrides
    the detected fused-QKV order ('interleaved' / 'blocked'), for checkpoints whose arguments do not tell."""
    from megatron.checkpointing.tokenizer_check import tokenizer_fingerprint
    from megatron.checkpointing.weights_checkpoint import write_weights_checkpoint
    from megatron.config import resolve_config

    source = open_megatron_checkpoint(load_dir)
    args = source.args
    fields = model_fields(args)
    tp, pp = parallel_sizes(args)
    order = qkv_row_order or qkv_order(args, source.kind)
    if order not in QKV_ORDERS:
        raise CheckpointError(f"QKV row order {order!r} is not one of {QKV_ORDERS}")

    values = dict(fields, make_vocab_size_divisible_by=int(args.get("make_vocab_size_divisible_by", 128) or 128),
                  micro_batch_size=1, global_batch_size=1, train_iters=1, lr=1e-4)
    overrides = dict(tokenizer_type=tokenizer_type, tokenizer_model=tokenizer_model, vocab_file=vocab_file,
                     merge_file=merge_file)
    tokenizer, settings = _carry_tokenizer(_tokenizer_settings(args, overrides), save_dir,
                                           any(overrides.values()), log)
    values.update({key: value for key, value in settings.items() if value})
    run_config = resolve_config(values, deepspeed_config={"zero_optimization": {"stage": 0}}, world_size=1)
    padded = args.get("padded_vocab_size")
    vocab = tokenizer.vocab_size if tokenizer is not None else padded
    if vocab is None:
        raise CheckpointError(f"{source.folder}: the arguments hold no padded_vocab_size and no tokenizer was "
                              f"given: pass --tokenizer-type and its files")
    run_config = run_config.with_vocab(vocab)

    weights = read_whole_weights(source, fields, run_config.model, order)
    folder = write_weights_checkpoint(
        weights, run_config, save_dir, source=source.folder,
        tokenizer=tokenizer_fingerprint(tokenizer, run_config.data) if tokenizer is not None else None)
    log(f"> imported {source.folder} ({source.kind}, TP={tp} PP={pp}, iteration {source.iteration}, QKV rows "
        f"{order}) into {folder}; weights only: train on it with --load {save_dir} --finetune")
    if universal_optimizer_state(source) is not None:
        log(f"> {source.folder} also holds Adam moments: to resume with them (iteration, LR position and optimizer "
            f"state carried), --load {load_dir} directly without --finetune instead")
    return folder
