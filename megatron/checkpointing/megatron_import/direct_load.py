"""``--load`` pointed at a Megatron-DeepSpeed / Megatron-LM checkpoint folder: converted once, next to it.

Rank 0 merges the source's TP/PP shards into whole tensors in our names and writes them in the universal
layout (``<load>/megatron-ds-import.universal/zero/<name>/fp32.pt``, finished by a marker file), which every
rank then cuts to its own TP slice, for any TP/PP/ZeRO layout (universal_load.py). The run's model flags must
describe the source's architecture; each difference is named.

Optimizer state maps only from a ds_to_universal folder (Adam moments whole per parameter, like the weights):
its ``exp_avg`` / ``exp_avg_sq`` go through the weights' own mapping (names, QKV row order, TP merge; the
padding rows ds_to_universal dropped come back as zeros, which is what Adam holds for rows no token reaches),
with Adam's step count, the iteration, consumed samples/tokens; ``--load`` without ``--finetune`` then resumes.
Other Megatron folders partition their optimizer state by their own ZeRO groups: weights only (--finetune).
"""

import json
import os
import shutil
import types

import torch

from megatron.checkpointing.megatron_import.arguments import model_fields, qkv_order
from megatron.checkpointing.megatron_import.convert import read_whole_weights
from megatron.checkpointing.megatron_import.sources import (UNIVERSAL_MOMENTS, detect_megatron_checkpoint,
                                                            open_megatron_checkpoint, universal_optimizer_state)
from megatron.checkpointing.safe_load import CheckpointError
from megatron.core import comm

IMPORT_FOLDER = "megatron-ds-import.universal"
DONE_MARKER = "megatron_import_done.json"
IMPORT_VERSION = 2  # 2: optimizer state carried from ds_to_universal folders; older copies are redone
COMPARED_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "kv_channels",
                   "ffn_hidden_size", "position_embedding_type", "rotary_base", "normalization", "norm_epsilon",
                   "swiglu", "add_bias_linear", "untie_embeddings_and_output_weights")


def is_megatron_checkpoint(load_dir: str) -> bool:
    kind = detect_megatron_checkpoint(load_dir)
    if kind == "unsupported":
        open_megatron_checkpoint(load_dir)  # raises the message naming what is not importable
    return kind is not None


def _convert(load_dir: str, target: str, log) -> dict:
    source = open_megatron_checkpoint(load_dir)
    fields = model_fields(source.args)
    order = qkv_order(source.args, source.kind)
    weights = read_whole_weights(source, fields, types.SimpleNamespace(**fields), order)
    optimizer = universal_optimizer_state(source)
    moments = {key: read_whole_weights(source, fields, types.SimpleNamespace(**fields), order, state_key=key)
               for key in (UNIVERSAL_MOMENTS if optimizer else ())}
    working = target + ".incomplete"
    shutil.rmtree(working, ignore_errors=True)
    for name, tensor in weights.items():
        os.makedirs(os.path.join(working, "zero", name))
        torch.save({"param": tensor}, os.path.join(working, "zero", name, "fp32.pt"))
        for key, whole in moments.items():
            torch.save({"param": whole[name]}, os.path.join(working, "zero", name, f"{key}.pt"))
        if optimizer:
            torch.save(torch.tensor(optimizer["adam_step"]), os.path.join(working, "zero", name, "step.pt"))
    record = {"source": source.folder, "kind": source.kind, "iteration": source.iteration, "qkv_order": order,
              "model": fields, "version": IMPORT_VERSION, "optimizer": optimizer}
    with open(os.path.join(working, DONE_MARKER), "w") as handle:
        json.dump(record, handle, indent=1)
    shutil.rmtree(target, ignore_errors=True)
    os.rename(working, target)
    log(f"> converted {source.folder} ({source.kind}, QKV rows {order}, "
        f"{'with its Adam state' if optimizer else 'weights only'}) once into {target}")
    return record


def ensure_imported(load_dir: str, log=print) -> dict:
    """The converted copy's record, converting on rank 0 if it is not there yet (collective)."""
    target = os.path.join(load_dir, IMPORT_FOLDER)
    record, error = None, None
    if comm.get_rank() == 0:
        try:
            marker = os.path.join(target, DONE_MARKER)
            if os.path.isfile(marker):
                with open(marker) as handle:
                    record = json.load(handle)
            if record is None or record.get("version") != IMPORT_VERSION:
                record = _convert(load_dir, target, log)
        except Exception as caught:  # every rank must learn of it, or the others wait forever
            error = f"{type(caught).__name__}: {caught}"
    record, error = comm.broadcast_object((record, error), src=0)
    if error is not None:
        raise CheckpointError(f"importing the Megatron checkpoint in {load_dir} failed on rank 0: {error}")
    return record


def check_same_model(model_config, imported: dict, load_dir: str):
    if model_config is None:
        return
    differences = [f"{name}: checkpoint {imported[name]!r}, this run {getattr(model_config, name)!r}"
                   for name in COMPARED_FIELDS if hasattr(model_config, name)
                   and getattr(model_config, name) != imported[name]]
    if differences:
        raise CheckpointError(f"the Megatron checkpoint in {load_dir} is another model than this run's flags "
                              f"describe ({'; '.join(differences)}): set the model flags to the checkpoint's")
