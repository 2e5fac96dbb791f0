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
from typing import Dict, Optional, Tuple

import torch

from megatron.checkpointing.manifest import MANIFEST_NAME, manifest_layout, read_manifest
from megatron.checkpointing.safe_load import CheckpointError, safe_torch_load, weights_only_torch_load
from megatron.checkpointing.save import CLIENT_STATE_KEY, INCOMPLETE_SUFFIX, UNIVERSAL_SUFFIX, tag_for
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
    """Write the universal form of checkpoint folder ``source`` into ``target`` (replaced if present).

    Parameter folders are named by GPTModel names, whatever form (plain model, DeepSpeed pipeline module,
    Megatron-schedule stage chunks) saved the checkpoint.
    """
    manifest = read_manifest(source)
    layout = manifest_layout(manifest)
    working = target + INCOMPLETE_SUFFIX
    shutil.rmtree(working, ignore_errors=True)
    log(f"> converting {source} ({layout.describe()}) to the universal format in {target}")
    stage_maps = manifest.get("pipeline_names") or {}
    if layout.zero_stage == 0:
        _convert_zero0(source, working, manifest)
        _rename_to_model_names(working, _union(stage_maps))
    elif _names_are_global(stage_maps):
        _run_ds_to_universal(source, working)
        _rename_to_model_names(working, _union(stage_maps))
    else:
        _convert_stage_by_stage(source, working, layout, stage_maps)
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


def _union(stage_maps: Dict[str, Dict[str, str]]) -> Dict[str, str]:
    merged: Dict[str, str] = {}
    for names in stage_maps.values():
        merged.update(names)
    return merged


def _names_are_global(stage_maps: Dict[str, Dict[str, str]]) -> bool:
    """True when each saved name means one parameter on every stage (plain model, DeepSpeed pipeline module);
    False for Megatron-schedule stages, whose local names ('chunks.0.layers.0...') repeat across stages."""
    seen: Dict[str, str] = {}
    for names in stage_maps.values():
        for saved, model in names.items():
            if seen.setdefault(saved, model) != model:
                return False
    return True


def _move_to_model_names(source_zero: str, target_zero: str, names: Dict[str, str]):
    """Move each parameter folder ``source_zero/<saved name>`` to ``target_zero/<model name>``. A model name
    already present is a tied copy (the head's replica of the embedding) holding equal values: dropped."""
    os.makedirs(target_zero, exist_ok=True)
    for saved in sorted(os.listdir(source_zero)):
        path = os.path.join(source_zero, saved)
        destination = os.path.join(target_zero, names.get(saved, saved))
        if os.path.isdir(path) and not os.path.exists(destination):
            os.rename(path, destination)
        elif os.path.isfile(path) and not os.path.exists(destination):  # optimizer_state.pt
            os.rename(path, destination)


def _rename_to_model_names(folder: str, names: Dict[str, str]):
    saved_names = os.path.join(folder, "zero.saved_names")
    os.rename(os.path.join(folder, "zero"), saved_names)
    _move_to_model_names(saved_names, os.path.join(folder, "zero"), names)
    shutil.rmtree(saved_names)


def _stage_file(path: str, target: str):
    """One stage's file as a file of a PP=1 checkpoint: optimizer shards as they are, model-state files with
    the parallel dimensions DeepSpeed recorded (PP of the whole run) set to one stage."""
    if "model_states" not in os.path.basename(path):
        os.symlink(os.path.abspath(path), target)
        return
    from deepspeed.checkpoint.constants import CHECKPOINT_PARALLEL_DIMS, CHECKPOINT_PP_DEGREE

    state = safe_torch_load(path)
    if isinstance(state.get(CHECKPOINT_PARALLEL_DIMS), dict):
        state[CHECKPOINT_PARALLEL_DIMS] = {**state[CHECKPOINT_PARALLEL_DIMS], CHECKPOINT_PP_DEGREE: 1}
    torch.save(state, target)


def _convert_stage_by_stage(source: str, working: str, layout, stage_maps: Dict[str, Dict[str, str]]):
    """Megatron-schedule pipelines: every stage's files form a TP-only checkpoint (its ``mp_rank_XX`` are
    pp_rank * TP + tp_rank); ds_to_universal converts each, then names become GPTModel names."""
    tp = layout.tensor_model_parallel_size
    os.makedirs(os.path.join(working, "zero"), exist_ok=True)
    for stage in range(layout.pipeline_model_parallel_size):
        stage_source, stage_target = working + f".stage{stage}", working + f".stage{stage}.universal"
        shutil.rmtree(stage_source, ignore_errors=True)
        os.makedirs(stage_source)
        for path in glob.glob(os.path.join(source, "*.pt")):
            match = re.search(r"mp_rank_(\d+)", os.path.basename(path))
            if match and stage * tp <= int(match.group(1)) < (stage + 1) * tp:
                local = f"mp_rank_{int(match.group(1)) - stage * tp:02d}"
                _stage_file(path, os.path.join(stage_source, os.path.basename(path).replace(match.group(0), local)))
        # The declaration covers every stage; patterns of the other stages' parameters go unused here.
        _run_ds_to_universal(stage_source, stage_target, strict=False)
        # The first stage's optimizer_state.pt serves all stages (Adam's step is global).
        _move_to_model_names(os.path.join(stage_target, "zero"), os.path.join(working, "zero"),
                             stage_maps[str(stage)])
        shutil.rmtree(stage_source)
        shutil.rmtree(stage_target)
    # The source's own model files (scheduler, iteration, client state), as DeepSpeed's loader expects them.
    for path in glob.glob(os.path.join(source, "*model_states.pt")):
        shutil.copy2(path, working)


def _run_ds_to_universal(source: str, working: str, strict: bool = True):
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=source, output_folder=working, num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=strict,
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


# --- Megatron-DeepSpeed's workflow: the user runs ds_to_universal, then trains with --universal-checkpoint ---
LATEST_UNIVERSAL_FILE = "latest_universal"  # written by ds_to_universal next to the folder it made


def user_converted_universal(load_dir: str, log=print) -> Optional[Tuple[str, str]]:
    """(source tag, folder) of a universal checkpoint the user made with
    ``python -m deepspeed.checkpoint.ds_to_universal --input_folder <load>/global_stepN --output_folder <load>/X``,
    which names X in ``<load>/latest_universal``; None when there is none (our own cached conversions, named
    ``<tag>.universal``, do not count). The folder is completed once, like our own conversions: parameter
    folders renamed to GPTModel names and the source manifest copied in (collective)."""
    path = os.path.join(load_dir, LATEST_UNIVERSAL_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        name = handle.read().strip()
    if not name or name.endswith(UNIVERSAL_SUFFIX):
        return None
    folder = os.path.join(load_dir, name)
    if not os.path.isdir(os.path.join(folder, "zero")):
        raise CheckpointError(f"{path} names {name!r}, but {folder}/zero does not exist: rerun "
                              f"deepspeed.checkpoint.ds_to_universal, or delete {path} to let "
                              f"--universal-checkpoint convert the newest checkpoint itself")
    state = safe_torch_load(universal_model_state_file(folder))
    iteration = (state.get(CLIENT_STATE_KEY) or {}).get("iteration", state.get("iteration"))
    source = tag_for(int(iteration)) if iteration is not None else None
    if source is None or not os.path.isfile(os.path.join(load_dir, source, MANIFEST_NAME)):
        raise CheckpointError(f"{folder} (named by {path}) was converted from iteration {iteration}, but "
                              f"{os.path.join(load_dir, str(source))} with its manifest is not there; keep the "
                              f"source checkpoint next to its universal copy")
    error = None
    if comm.get_rank() == 0 and not os.path.isfile(os.path.join(folder, DONE_MARKER)):
        try:
            _complete_user_conversion(os.path.join(load_dir, source), folder, log)
        except Exception as caught:  # every rank must learn of it, or the others wait forever
            error = f"{type(caught).__name__}: {caught}"
    error = comm.broadcast_object(error, src=0)
    if error is not None:
        raise CheckpointError(f"preparing {folder} (made by ds_to_universal) failed on rank 0: {error}")
    return source, folder


def _complete_user_conversion(source: str, folder: str, log=print):
    manifest = read_manifest(source)
    stage_maps = manifest.get("pipeline_names") or {}
    if manifest_layout(manifest).zero_stage == 0 or not _names_are_global(stage_maps):
        raise CheckpointError(f"{source} was saved with ZeRO-0 or by a Megatron-schedule pipeline, which "
                              f"ds_to_universal cannot convert correctly; delete {folder} and its "
                              f"latest_universal file and let --universal-checkpoint convert it")
    log(f"> completing {folder} (made by ds_to_universal from {source}) for loading")
    _rename_to_model_names(folder, _union(stage_maps))
    shutil.copy2(os.path.join(source, MANIFEST_NAME), os.path.join(folder, "source_" + MANIFEST_NAME))
    with open(os.path.join(folder, DONE_MARKER), "w") as handle:
        handle.write(f'{{"source": "{os.path.basename(source)}", "converted_by": "ds_to_universal"}}\n')
