"""Whole fp32 weights of a checkpoint of any layout, by the plain model's parameter names.

The universal conversion (universal.py) already merges TP shards, joins ZeRO partitions and strips the
vocabulary padding, so consolidation is: convert once (cached next to the checkpoint), then read each
parameter's ``fp32.pt``. Runs in a single process, no process group needed.
"""

import os
from typing import Callable, Dict, Optional, Tuple

import torch

from megatron.checkpointing.manifest import read_manifest, verify_files
from megatron.checkpointing.moe_weights import is_moe_checkpoint, moe_checkpoint_weights
from megatron.checkpointing.safe_load import CheckpointError, safe_torch_load
from megatron.checkpointing.save import read_latest
from megatron.checkpointing.universal import DONE_MARKER, convert_to_universal


def resolve_checkpoint_folder(path: str) -> str:
    """A tag folder (global_stepN) as given, or the one a save folder's ``latest`` names."""
    if os.path.isfile(os.path.join(path, "checkpoint_manifest.json")):
        return path
    tag = read_latest(path)
    if tag is None:
        raise CheckpointError(f"{path} is neither a checkpoint folder (no checkpoint_manifest.json) nor a save "
                              f"folder with a `latest` file; pass --save DIR or DIR/global_stepN")
    return os.path.join(path, tag)


def consolidated_weights(path: str, *, plain_name: Optional[Callable[[str], str]] = None,
                         log=print) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(name -> whole fp32 tensor, manifest) for checkpoint ``path`` (a save folder or a tag folder).

    ``plain_name`` renames the checkpoint's parameters (a pipeline module's names) to the plain model's.
    """
    folder = resolve_checkpoint_folder(path)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    if is_moe_checkpoint(folder):
        weights = moe_checkpoint_weights(folder, manifest)
        return dict(sorted((plain_name(n) if plain_name else n, t) for n, t in weights.items())), manifest
    universal = folder.rstrip(os.sep) + ".universal"
    if not os.path.isfile(os.path.join(universal, DONE_MARKER)):
        convert_to_universal(folder, universal, log=log)
    weights = {}
    for name in manifest["parameters"]:
        stored = safe_torch_load(os.path.join(universal, "zero", name, "fp32.pt"))
        tensor = stored["param"] if isinstance(stored, dict) else stored
        weights[plain_name(name) if plain_name else name] = tensor.float().contiguous()
    return dict(sorted(weights.items())), manifest
