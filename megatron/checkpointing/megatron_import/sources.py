"""Which Megatron checkpoint a folder holds, and its tensors per (pipeline stage, tensor rank).

Layouts read (facts from Megatron-DeepSpeed's GPTModelPipe / checkpointing.py and Megatron-LM's
checkpointing.py; DeepSpeed names the tag folder in ``latest``, Megatron in latest_checkpointed_iteration.txt):
- megds-pipeline: ``global_stepN/layer_XX-model_YY-model_states.pt`` (one file per pipeline layer XX and
  tensor rank YY) + ``mp_rank_YY_model_states.pt`` (arguments, iteration; ``module`` is None);
- megds-module (``--no-pipeline-parallel``): ``global_stepN/mp_rank_YY_model_states.pt`` with the whole model
  under ``module`` (names ``language_model.embedding...``, ``language_model.encoder.layers.N...``);
- megds-universal (made by DeepSpeed's ``ds_to_universal``): ``<folder>/zero/<param name>/fp32.pt`` holding
  ``{'param': whole tensor}`` (TP merged; vocabulary padding dropped; SwiGLU's dense_h_to_4h as all gate rows
  then all up rows; fused QKV the TP ranks' rows one after the other), next to copies of the
  ``mp_rank_XX_model_states.pt`` files. Names are the module's: ``language_model.*`` or, for the pipeline
  form, ``tied_modules.embed.*`` and ``<layer index>.<key>``;
- megatron-lm (``--ckpt-format torch``): ``iter_NNNNNNN/mp_rank_TT[_PPP]/model_optim_rng.pt`` with ``model``.
Refused with a message: ``torch_dist`` (``*.distcp``), virtual pipelines.
"""

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from megatron.checkpointing.safe_load import CheckpointError, safe_megatron_load

LAYER_FILE = re.compile(r"layer_(\d+)-model_(\d+)-model_states\.pt$")
MP_RANK_FILE = re.compile(r"mp_rank_(\d+)_model_states\.pt$")
OUR_CLIENT_STATE = "megatron_ds"  # save.py's CLIENT_STATE_KEY (not imported: save.py imports DeepSpeed engines)
MEGATRON_LM_RANK_DIR = re.compile(r"mp_rank_(\d+)(?:_(\d+))?$")


@dataclass
class MegatronSource:
    kind: str                      # megds-pipeline | megds-module | megds-universal | megatron-lm
    folder: str                    # the tag folder (global_stepN / iter_NNNNNNN)
    args: dict                     # the pickled arguments, as a dict
    iteration: int
    # (pp_rank, tp_rank) -> file; for megds-pipeline: tp_rank -> [(layer index, file)] in layer order
    files: Dict[Tuple[int, int], str] = field(default_factory=dict)
    layer_files: Dict[int, List[Tuple[int, str]]] = field(default_factory=dict)


def _read_text(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return handle.read().strip()


def _step_number(tag: Optional[str]) -> int:
    found = re.search(r"(\d+)", tag or "")
    return int(found.group(1)) if found else -1


def _tag_folder(load_dir: str) -> str:
    """The checkpoint folder ``load_dir`` points at: itself, or the tag its `latest` files name."""
    if glob.glob(os.path.join(load_dir, "*model_states.pt")) or glob.glob(os.path.join(load_dir, "mp_rank_*")):
        return load_dir
    tag = _read_text(os.path.join(load_dir, "latest"))
    universal = _read_text(os.path.join(load_dir, "latest_universal"))  # written by ds_to_universal
    # The ds_to_universal copy holds the optimizer state; it wins unless training saved a newer step since.
    if universal is not None and os.path.isdir(os.path.join(load_dir, universal, "zero")) and \
            _step_number(universal) >= _step_number(tag):
        return os.path.join(load_dir, universal)
    if tag is not None and os.path.isdir(os.path.join(load_dir, tag)):
        return os.path.join(load_dir, tag)
    if universal is not None and os.path.isdir(os.path.join(load_dir, universal)):
        return os.path.join(load_dir, universal)
    iteration = _read_text(os.path.join(load_dir, "latest_checkpointed_iteration.txt"))
    if iteration is not None:
        name = "release" if iteration == "release" else f"iter_{int(iteration):07d}"
        for candidate in (name, f"global_step{iteration}"):
            if os.path.isdir(os.path.join(load_dir, candidate)):
                return os.path.join(load_dir, candidate)
    raise CheckpointError(f"{load_dir} holds no Megatron checkpoint: expected `latest` (Megatron-DeepSpeed) or "
                          f"latest_checkpointed_iteration.txt (Megatron-LM) naming a global_stepN / iter_N folder, "
                          f"or pass that folder itself")


def _refuse_unsupported(folder: str):
    if glob.glob(os.path.join(folder, "*.distcp")) or os.path.isfile(os.path.join(folder, ".metadata")):
        raise CheckpointError(
            f"{folder} is a Megatron-LM torch_dist checkpoint; importing it is not implemented: convert it to "
            f"the torch format with Megatron-LM (--ckpt-convert-format torch) and import that")


def _as_dict(args) -> dict:
    if args is None:
        raise CheckpointError("the checkpoint holds no `args`: it was not written by Megatron-DeepSpeed or "
                              "Megatron-LM (megatron-ds needs the pickled arguments to know the architecture)")
    return dict(vars(args)) if not isinstance(args, dict) else dict(args)


def detect_megatron_checkpoint(load_dir: str) -> Optional[str]:
    """The kind of Megatron checkpoint in ``load_dir``, "unsupported" for one not importable, or None (ours,
    or nothing there)."""
    try:
        folder = _tag_folder(load_dir)
    except CheckpointError:
        return None
    from megatron.checkpointing.manifest import MANIFEST_NAME

    if os.path.isfile(os.path.join(folder, MANIFEST_NAME)):
        return None  # ours
    mp_files = sorted(glob.glob(os.path.join(folder, "mp_rank_*_model_states.pt")))
    if mp_files:
        # Ours too has these files (an unfinished save lacks the manifest): only pickled Megatron arguments
        # without our client state mark a Megatron-DeepSpeed checkpoint. An unreadable file is left to the
        # native loader, which names the problem.
        try:
            head = safe_megatron_load(mp_files[0], mmap=True)
        except CheckpointError:
            return None
        if not isinstance(head, dict) or head.get("args") is None or OUR_CLIENT_STATE in head:
            return None
        if os.path.isdir(os.path.join(folder, "zero")):
            return "megds-universal"
        return "megds-pipeline" if glob.glob(os.path.join(folder, "layer_*-model_*-model_states.pt")) \
            else "megds-module"
    if glob.glob(os.path.join(folder, "mp_rank_*", "model_optim_rng.pt")):
        return "megatron-lm"
    if glob.glob(os.path.join(folder, "*.distcp")):
        return "unsupported"
    return None


def open_megatron_checkpoint(load_dir: str) -> MegatronSource:
    folder = _tag_folder(load_dir)
    _refuse_unsupported(folder)
    layer_paths = sorted(glob.glob(os.path.join(folder, "layer_*-model_*-model_states.pt")))
    mp_paths = sorted(glob.glob(os.path.join(folder, "mp_rank_*_model_states.pt")))
    lm_paths = sorted(glob.glob(os.path.join(folder, "mp_rank_*", "model_optim_rng.pt")))
    if mp_paths:
        head = safe_megatron_load(mp_paths[0])
        args, iteration = _as_dict(head.get("args")), int(head.get("iteration", 0) or 0)
        files = {(0, int(MP_RANK_FILE.search(path).group(1))): path for path in mp_paths}
        if os.path.isdir(os.path.join(folder, "zero")):
            return MegatronSource("megds-universal", folder, args, iteration, files)
        if not layer_paths:
            if head.get("module") is None:
                raise CheckpointError(f"{mp_paths[0]} has no `module` and {folder} no layer_*-model_*-model_states.pt "
                                      f"files: the checkpoint is incomplete")
            return MegatronSource("megds-module", folder, args, iteration, files)
        layer_files: Dict[int, List[Tuple[int, str]]] = {}
        for path in layer_paths:
            found = LAYER_FILE.search(os.path.basename(path))
            layer_files.setdefault(int(found.group(2)), []).append((int(found.group(1)), path))
        for tp_rank in layer_files:
            layer_files[tp_rank].sort()
        return MegatronSource("megds-pipeline", folder, args, iteration, files, layer_files)
    if lm_paths:
        files = {}
        for path in lm_paths:
            found = MEGATRON_LM_RANK_DIR.search(os.path.basename(os.path.dirname(path)))
            files[(int(found.group(2) or 0), int(found.group(1)))] = path
        head = safe_megatron_load(files[min(files)])
        return MegatronSource("megatron-lm", folder, _as_dict(head.get("args")), int(head.get("iteration", 0) or 0),
                              files)
    raise CheckpointError(f"{folder} holds none of the Megatron checkpoint files megatron-ds imports "
                          f"(layer_*-model_*-model_states.pt, mp_rank_*_model_states.pt, "
                          f"mp_rank_*/model_optim_rng.pt)")


def _flatten(tree, prefix="") -> Dict[str, torch.Tensor]:
    """Megatron-LM's legacy nested state ({'language_model': {'embedding': {...}}}) -> dotted names."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, torch.Tensor):
            flat[name] = value
    return flat


UNIVERSAL_PIPELINE_NAME = re.compile(r"^(\d+)\.(.+)$")


UNIVERSAL_MOMENTS = ("exp_avg", "exp_avg_sq")


def _universal_state(source: MegatronSource, state_key: str = "fp32") -> Dict[str, torch.Tensor]:
    """Whole tensors by name (``state_key``: fp32 master weights, or an Adam moment ds_to_universal merged by the
    same rules); pipeline-form names become ``layer_XX.<key>`` (the tied embedding is layer 1)."""
    state = {}
    zero = os.path.join(source.folder, "zero")
    for name in sorted(os.listdir(zero)):
        if os.path.isfile(os.path.join(zero, name, "fp32.pt")) and state_key != "fp32" and \
                not os.path.isfile(os.path.join(zero, name, f"{state_key}.pt")):
            raise CheckpointError(f"{os.path.join(zero, name)} has fp32.pt but no {state_key}.pt: the universal "
                                  f"checkpoint's optimizer state is incomplete")
        path = os.path.join(zero, name, f"{state_key}.pt")
        if not os.path.isfile(path):
            continue  # optimizer_state.pt and the like
        stored = safe_megatron_load(path)
        tensor = stored["param"] if isinstance(stored, dict) else stored
        found = UNIVERSAL_PIPELINE_NAME.match(name)
        if name.startswith("tied_modules.embed."):
            name = "layer_01." + name[len("tied_modules.embed."):]
        elif found:
            name = f"layer_{int(found.group(1)):02d}.{found.group(2)}"
        state[name] = tensor
    return state


def universal_pipeline_names(state: Dict[str, torch.Tensor]) -> bool:
    return any(name.startswith("layer_") for name in state)


def universal_optimizer_state(source: MegatronSource) -> Optional[dict]:
    """Adam's step count and the training position of a ds_to_universal folder whose every parameter has
    exp_avg.pt and exp_avg_sq.pt; None when the folder holds weights only (or is not a universal one)."""
    if source.kind != "megds-universal":
        return None
    zero = os.path.join(source.folder, "zero")
    params = [name for name in sorted(os.listdir(zero)) if os.path.isfile(os.path.join(zero, name, "fp32.pt"))]
    if not params or not all(os.path.isfile(os.path.join(zero, name, f"{key}.pt"))
                             for name in params for key in UNIVERSAL_MOMENTS):
        return None
    step_path = os.path.join(zero, params[0], "step.pt")
    step = safe_megatron_load(step_path) if os.path.isfile(step_path) else source.iteration
    head = safe_megatron_load(source.files[min(source.files)])
    samples = source.args.get("consumed_train_samples")
    if samples is None and isinstance(head.get("lr_scheduler"), dict):
        samples = head["lr_scheduler"].get("num_steps")  # Megatron's scheduler counts samples
    tokens = head.get("tokens", source.args.get("consumed_train_tokens"))
    return {"adam_step": float(step.item() if torch.is_tensor(step) else step),
            "consumed_train_samples": None if samples is None else int(samples),
            "consumed_train_tokens": None if tokens is None else int(tokens)}


def rank_states(source: MegatronSource, state_key: str = "fp32"):
    """Yield (pp_rank, tp_rank, {name: tensor}) for every rank file; pipeline layer files come as one
    state per tensor rank with names ``layer_XX.<key>``. ``state_key`` other than fp32: universal sources only."""
    if source.kind == "megds-universal":
        yield 0, 0, _universal_state(source, state_key)
        return
    assert state_key == "fp32", state_key
    if source.kind == "megds-pipeline":
        for tp_rank, entries in sorted(source.layer_files.items()):
            state = {}
            for index, path in entries:
                state.update({f"layer_{index:02d}.{key}": value
                              for key, value in _flatten(safe_megatron_load(path)).items()})
            yield 0, tp_rank, state
        return
    for (pp_rank, tp_rank), path in sorted(source.files.items()):
        loaded = safe_megatron_load(path)
        if source.kind == "megds-module":
            module = loaded.get("module")
        else:
            if "model0" in loaded:
                raise CheckpointError(f"{path} holds a virtual (interleaved) pipeline's model chunks; importing "
                                      f"those is not implemented: save with --num-layers-per-virtual-pipeline-"
                                      f"stage unset")
            module = loaded.get("model")
        if not isinstance(module, dict):
            raise CheckpointError(f"{path} holds no model state dict (`module` / `model`)")
        yield pp_rank, tp_rank, _flatten(module)
