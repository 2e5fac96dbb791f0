"""Whole fp32 weights of a Mixture-of-Experts checkpoint (TP = PP = 1, any EP, ZeRO 0-2).

DeepSpeed writes MoE runs as ``mp_rank_00_model_states.pt`` (every non-expert parameter, whole at TP = 1) plus
one ``layer_<L>_expert_<global id>_mp_rank_00_model_states.pt`` per expert, keyed by the global expert id: the
weights read back the same whatever the expert-parallel size was. The universal conversion does not handle
these files, so consolidation reads them directly; the module weights are only the training weights when the
run trained in fp32 (bf16/fp16 runs keep their fp32 master copy in the optimizer shards), so others are refused.
"""

import glob
import os
import re
from typing import Dict

import torch

from megatron.checkpointing.manifest import manifest_layout
from megatron.checkpointing.safe_load import CheckpointError, safe_torch_load

EXPERT_FILES = "layer_*_expert_*_mp_rank_00_model_states.pt"
EXPERT_KEY = "deepspeed_experts."


def is_moe_checkpoint(folder: str) -> bool:
    return bool(glob.glob(os.path.join(folder, EXPERT_FILES)))


def moe_checkpoint_weights(folder: str, manifest: dict) -> Dict[str, torch.Tensor]:
    layout = manifest_layout(manifest)
    if layout.tensor_model_parallel_size != 1 or layout.pipeline_model_parallel_size != 1:
        raise CheckpointError(f"{folder} is an MoE checkpoint at TP={layout.tensor_model_parallel_size}, "
                              f"PP={layout.pipeline_model_parallel_size}; consolidating MoE checkpoints is "
                              f"implemented at TP=1, PP=1 only")
    dense = safe_torch_load(os.path.join(folder, "mp_rank_00_model_states.pt"))["module"]
    experts = {}
    for path in sorted(glob.glob(os.path.join(folder, EXPERT_FILES))):
        experts.update(safe_torch_load(path))  # names carry the global expert id
    config = manifest.get("config") or {}
    vocab = (config.get("model") or {}).get("vocab_size")
    count = ((config.get("moe") or {}).get("num_experts") or [0])[0]
    result = {}
    for name, description in manifest["parameters"].items():
        if EXPERT_KEY in name:
            # The manifest lists the saving rank's LOCAL expert ids; expect every global id in the files.
            local = re.sub(EXPERT_KEY + r"\d+\.", EXPERT_KEY + "{}.", name)
            wanted = [local.format(expert) for expert in range(count)]
        else:
            wanted = [name]
        for key in wanted:
            source = experts if EXPERT_KEY in key else dense
            if key not in source:
                raise CheckpointError(f"{folder} lacks {key} (its manifest lists {name})")
            tensor = source[key]
            if tensor.dtype != torch.float32:
                raise CheckpointError(f"{folder} holds {tensor.dtype} module weights ({key}); consolidating MoE "
                                      f"checkpoints is implemented for fp32 runs only")
            if description.get("sharding") == "vocab" and vocab:
                tensor = tensor.narrow(description["partition_dim"], 0, vocab)  # strip the vocabulary padding
            result[key] = tensor.contiguous()
    return result
