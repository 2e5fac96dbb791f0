"""The manifest: what a complete checkpoint contains, written last, checked first.

``checkpoint_manifest.json`` sits in each tag folder. It lists every file with its size (a truncated or
missing shard is caught before DeepSpeed opens anything) and its CRC-32 (a bit flipped on disk or in transfer is
caught too; streamed in 4 MiB chunks: 0.4-0.7 s per GiB here, see checksum_file), the parallel layout it was saved with (a resume
into another layout needs resharding), every parameter with its full, unsharded shape and its declared
sharding (a checkpoint of another model is refused with the mismatching names and shapes), the training
position and the versions that wrote it.
"""

import json
import os
import zlib
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

from megatron.checkpointing.safe_load import CheckpointError

MANIFEST_NAME = "checkpoint_manifest.json"
MANIFEST_FORMAT_VERSION = 1
_CHUNK = 4 << 20


@dataclass(frozen=True)
class Layout:
    """How the saved model was split; two checkpoints with equal layouts have interchangeable files."""
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    data_parallel_size: int
    zero_stage: int

    def describe(self) -> str:
        return (f"TP={self.tensor_model_parallel_size} PP={self.pipeline_model_parallel_size} "
                f"DP={self.data_parallel_size} ZeRO-{self.zero_stage}")


def list_files(folder: str) -> Dict[str, int]:
    """Relative path -> size in bytes of every file under ``folder`` (the manifest excepted)."""
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if relative != MANIFEST_NAME:
                sizes[relative] = os.path.getsize(path)
    return dict(sorted(sizes.items()))


def checksum_file(path: str) -> str:
    """``crc32:<8 hex>`` of a file's content, streamed. CRC-32 finds corruption (flipped bits, zeroed or
    overwritten blocks), not tampering: code execution from a crafted file is stopped by the weights-only
    loader (safe_load.py), not by this."""
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"crc32:{crc:08x}"


def write_manifest(folder: str, *, iteration: int, layout: Layout, parameters: Dict[str, dict],
                   pipeline_names: Dict[str, Dict[str, str]], training: dict, versions: dict,
                   config: Optional[dict], tokenizer: Optional[dict] = None):
    """``parameters`` by model name; ``pipeline_names``: {pipeline rank: {saved name: model name}}."""
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "iteration": iteration,
        "layout": asdict(layout),
        "training": training,
        "versions": versions,
        "parameters": parameters,
        "pipeline_names": pipeline_names,
        "files": list_files(folder),
        "config": config,
        "tokenizer": tokenizer,
    }
    manifest["checksums"] = {name: checksum_file(os.path.join(folder, name)) for name in manifest["files"]}
    path = os.path.join(folder, MANIFEST_NAME)
    with open(path, "w") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder} has no {MANIFEST_NAME}: it is not a complete megatron-ds checkpoint "
                              f"(a save that did not finish, or written by other software). Resume from the "
                              f"checkpoint named in the `latest` file of its parent folder")
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is unreadable ({error}); the checkpoint is damaged") from error
    if manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise CheckpointError(f"{path} has manifest format {manifest.get('format_version')!r}; this megatron-ds "
                              f"reads format {MANIFEST_FORMAT_VERSION}")
    return manifest


def manifest_layout(manifest: dict) -> Layout:
    return Layout(**manifest["layout"])


def file_problems(folder: str, manifest: dict, share: int = 0, shares: int = 1) -> List[str]:
    """What is wrong with the listed files: missing, wrong size, or (for this ``share`` of ``shares``, so
    that ranks split the reading) wrong content. Manifests written before checksums existed get sizes only."""
    problems: List[str] = []
    checksums = manifest.get("checksums") or {}
    for index, (relative, size) in enumerate(manifest["files"].items()):
        path = os.path.join(folder, relative)
        if not os.path.isfile(path):
            problems.append(f"{path} is missing")
        elif os.path.getsize(path) != size:
            problems.append(f"{path} has {os.path.getsize(path)} bytes, the manifest recorded {size} (truncated "
                            f"or overwritten)")
        elif relative in checksums and index % shares == share and checksum_file(path) != checksums[relative]:
            problems.append(f"{path} has the recorded size but not the recorded content ({checksum_file(path)}, "
                            f"the manifest recorded {checksums[relative]}): corrupted on disk or in a copy")
    return problems


def raise_file_problems(folder: str, problems: List[str]):
    if problems:
        raise CheckpointError(f"checkpoint {folder} is damaged: " + "; ".join(problems)
                              + ". Resume from an older checkpoint (set `latest` to its tag) or re-save")


def verify_files(folder: str, manifest: dict):
    """Every listed file exists with its recorded size and content, else a CheckpointError naming the files."""
    problems = file_problems(folder, manifest)
    if problems:
        raise CheckpointError(f"checkpoint {folder} is damaged: " + "; ".join(problems)
                              + ". Resume from an older checkpoint (set `latest` to its tag) or re-save")


def compare_parameters(folder: str, saved: Dict[str, dict], current: Dict[str, dict], same_tp: bool):
    """Refuse a checkpoint of another architecture, naming the missing, unexpected and mis-shaped parameters.

    The vocabulary dimension is compared only at equal TP, because its padding grows with the TP size.
    """
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    mismatched = []
    for name in sorted(set(saved) & set(current)):
        saved_shape, current_shape = list(saved[name]["shape"]), list(current[name]["shape"])
        if current[name].get("sharding") == "vocab" and not same_tp and len(saved_shape) == len(current_shape):
            dim = current[name].get("partition_dim", 0)
            saved_shape[dim] = current_shape[dim]
        if saved_shape != current_shape:
            mismatched.append(f"{name}: checkpoint {tuple(saved[name]['shape'])} vs model "
                              f"{tuple(current[name]['shape'])}")
    if missing or unexpected or mismatched:
        details = []
        if mismatched:
            details.append("shape mismatch " + "; ".join(mismatched))
        if missing:
            details.append(f"missing from the checkpoint {missing}")
        if unexpected:
            details.append(f"not in the model {unexpected}")
        raise CheckpointError(f"checkpoint {os.path.join(folder, MANIFEST_NAME)} holds a different model than the "
                              f"one configured: " + "; ".join(details)
                              + ". Load it with the model flags it was trained with (stored in its manifest "
                              "under `config`)")
