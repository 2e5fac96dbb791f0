"""Converting a checkpoint to DeepSpeed's universal format, once, next to it.

The universal format holds every parameter whole (TP shards merged, ZeRO partitions joined, vocabulary
padding stripped) with its Adam moments: ``<tag>.universal/zero/<param name>/{fp32,exp_avg,exp_avg_sq}.pt``
plus ``step.pt`` (ZeRO-1/2) or ``zero/optimizer_state.pt`` (ZeRO-3), and a copy of the source's
``*model_states.pt`` files (scheduler, iteration, client state). Any layout can load it.

- ZeRO-1/2/3 sources go through DeepSpeed's ``ds_to_universal``, which merges TP shards by the patterns of the
  model's ``universal_checkpoint_info`` (stored in the checkpoint's client state at save time).
- ZeRO-0 sources have no optimizer shards, which ``ds_to_universal`` requires; :func:`_convert_zero0` writes
  the same format from the per-TP-rank model files, merging shards by the sharding recorded in the manifest.

Rank 0 converts into ``<tag>.universal.incomplete`` and renames it when done, so a conversion that dies is
redone and a finished one is reused by every later resume (the cache).
"""

import argparse
import contextlib
import glob
import os
import re
import shutil
from typing import Dict

import torch

from megatron.checkpointing.manifest import MANIFEST_NAME, manifest_layout, read_manifest
from megatron.checkpointing.safe_load import CheckpointError, safe_torch_load, weights_only_torch_load
from megatron.checkpointing.save import INCOMPLETE_SUFFIX, UNIVERSAL_SUFFIX
from megatron.core import comm

DONE_MARKER = "universal_conversion_done.json"


def universal_folder(load_dir: str, tag: str) -> str:
    return os.path.join(load_dir, tag + UNIVERSAL_SUFFIX)


def ensure_universal(load_dir: str, tag: str, log=print) -> str:
    """The universal copy of ``<load_dir>/<tag>``, converting it on rank 0 if it is not cached (collective)."""
    target = universal_folder(load_dir, tag)
    error = None
    if comm.get_rank() == 0 and not os.path.isfile(os.path.join(target, DONE_MARKER)):
        try:
            convert_to_universal(os.path.join(load_dir, tag), target, log=log)
        except Exception as caught:  # every rank must learn of it, or the others wait forever
            error = f"{type(caught).__name__}: {caught}"
    error = comm.broadcast_object(error, src=0)
    if error is not None:
        raise CheckpointError(f"converting {os.path.join(load_dir, tag)} to the universal format failed on rank "
                              f"0: {error}")
    return target


def convert_to_universal(source: str, target: str, log=print):
    """Write the universal form of checkpoint folder ``source`` into ``target`` (replaced if present)."""
    manifest = read_manifest(source)
    layout = manifest_layout(manifest)
    working = target + INCOMPLETE_SUFFIX
    shutil.rmtree(working, ignore_errors=True)
    log(f"> converting {source} ({layout.describe()}) to the universal format in {target}")
    if layout.zero_stage == 0:
        _convert_zero0(source, working, manifest)
    else:
        _run_ds_to_universal(source, working)
    shutil.copy2(os.path.join(source, MANIFEST_NAME), os.path.join(working, "source_" + MANIFEST_NAME))
    with open(os.path.join(working, DONE_MARKER), "w") as handle:
        handle.write(f'{{"source": "{os.path.basename(source)}"}}\n')
    shutil.rmtree(target, ignore_errors=True)
    os.rename(working, target)
    # ds_to_universal names its output in `latest_universal`; point it at the final folder, not the working one.
    latest_universal = os.path.join(os.path.dirname(target), "latest_universal")
    if os.path.exists(latest_universal):
        with open(latest_universal, "w") as handle:
            handle.write(os.path.basename(target))


def _run_ds_to_universal(source: str, working: str):
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=source, output_folder=working, num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=False)
    log_path = working + ".log"
    os.makedirs(working, exist_ok=True)
    # ds_to_universal calls torch.load(weights_only=False) on every shard; route each through the safe loader.
    with weights_only_torch_load(), open(log_path, "w") as log_file, \
            contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
        ds_to_universal.main(args)
    shutil.move(log_path, os.path.join(working, "ds_to_universal.log"))


def _model_state_files(source: str):
    return sorted(glob.glob(os.path.join(source, "mp_rank_*_model_states.pt")))


def _merge_tensor_parallel(name: str, shards, description: dict, original_vocab_size) -> torch.Tensor:
    if description.get("partition_dim") is None:
        return shards[0]
    merged = torch.cat(shards, dim=description["partition_dim"])
    if description.get("sharding") == "vocab" and original_vocab_size:
        merged = merged.narrow(description["partition_dim"], 0, original_vocab_size)
    return merged


def _convert_zero0(source: str, working: str, manifest: dict):
    """Universal form of a ZeRO-0 checkpoint (weights in the model files, optimizer state per parameter)."""
    layout = manifest_layout(manifest)
    if layout.pipeline_model_parallel_size != 1:
        raise CheckpointError(f"{source}: converting a ZeRO-0 pipeline checkpoint is not supported; save it with "
                              f"ZeRO-1 (the pipeline engine's default) to reshard it")
    files = _model_state_files(source)
    if len(files) != layout.tensor_model_parallel_size:
        raise CheckpointError(f"{source}: expected {layout.tensor_model_parallel_size} mp_rank_*_model_states.pt "
                              f"files for TP={layout.tensor_model_parallel_size}, found {len(files)}")
    states = [safe_torch_load(path) for path in files]
    info = states[0].get("universal_checkpoint_info") or {}
    original_vocab_size = info.get("original_vocab_size")
    per_rank = [_optimizer_state_by_name(state, path) for state, path in zip(states, files)]
    parameters: Dict[str, dict] = manifest["parameters"]
    for name, description in parameters.items():
        folder = os.path.join(working, "zero", name)
        os.makedirs(folder, exist_ok=True)
        weights = [state["module"][name].float() for state in states]
        entries = {"fp32": weights}
        if all(name in rank_state for rank_state in per_rank):
            entries["exp_avg"] = [rank_state[name]["exp_avg"] for rank_state in per_rank]
            entries["exp_avg_sq"] = [rank_state[name]["exp_avg_sq"] for rank_state in per_rank]
            torch.save(torch.as_tensor(per_rank[0][name]["step"], dtype=torch.float32).clone(),
                       os.path.join(folder, "step.pt"))
        for key, shards in entries.items():
            merged = _merge_tensor_parallel(name, shards, description, original_vocab_size)
            torch.save({"param": merged.contiguous().clone()}, os.path.join(folder, f"{key}.pt"))
    for path in files:
        shutil.copy2(path, working)


def _optimizer_state_by_name(state: dict, path: str) -> Dict[str, dict]:
    """A torch optimizer's state keyed by parameter name, via the names stored at save time."""
    optimizer = state.get("optimizer")
    names = (state.get("megatron_ds") or {}).get("optimizer_parameter_names")
    if not optimizer or not names:
        return {}
    by_name = {}
    for group, group_names in zip(optimizer["param_groups"], names):
        if len(group["params"]) != len(group_names):
            raise CheckpointError(f"{path}: the optimizer groups do not match the stored parameter names")
        for index, name in zip(group["params"], group_names):
            if index in optimizer["state"]:
                by_name[name] = optimizer["state"][index]
    return by_name


def universal_step(folder: str, name: str):
    """Adam's step count for ``name``: per parameter (ZeRO-1/2, ZeRO-0) or global (ZeRO-3 sources)."""
    path = os.path.join(folder, "zero", name, "step.pt")
    if os.path.isfile(path):
        return safe_torch_load(path)
    common = os.path.join(folder, "zero", "optimizer_state.pt")
    if os.path.isfile(common):
        state = safe_torch_load(common).get("optimizer_state_dict", {}).get("state", {})
        if state:
            return next(iter(state.values())).get("step")
    return None


def universal_model_state_file(folder: str) -> str:
    """One of the copied model-state files: scheduler, iteration and client state are the same in each."""
    candidates = sorted(glob.glob(os.path.join(folder, "*model_states.pt")),
                        key=lambda path: [int(part) if part.isdigit() else part
                                          for part in re.split(r"(\d+)", os.path.basename(path))])
    if not candidates:
        raise CheckpointError(f"universal checkpoint {folder} has no *model_states.pt file")
    return candidates[0]
