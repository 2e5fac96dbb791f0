"""A Hugging Face model folder -> a checkpoint that training can ``--load`` (use ``--finetune``).

The weights are read from safetensors (or, failing that, ``pytorch_model.bin`` with ``weights_only=True``),
mapped to our layout, loaded into a real GPTModel at TP=1 and saved through a ZeRO-0 DeepSpeed engine with
the same atomic save as training, at iteration 0 and without optimizer state. A run at another TP/PP/ZeRO
loads it with ``--finetune --universal-checkpoint``. The tokenizer files are copied to ``<save>/tokenizer``.
"""

import glob
import json
import os
from typing import Dict, Tuple

import torch

from megatron.checkpointing.hf import gpt2, llama, mixtral
from megatron.checkpointing.hf.tokenizer_files import copy_hf_tokenizer_files
from megatron.checkpointing.safe_load import safe_torch_load

FAMILIES = {"gpt2": gpt2, "llama": llama, "mixtral": mixtral}


def read_hf_folder(hf_dir: str) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(config.json as a dict, every tensor by Hugging Face name)."""
    from safetensors.torch import load_file

    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{hf_dir} has no config.json: pass a Hugging Face model folder")
    with open(config_path) as handle:
        config = json.load(handle)
    files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    state: Dict[str, torch.Tensor] = {}
    if files:
        for path in files:
            state.update(load_file(path))
    else:
        bins = sorted(glob.glob(os.path.join(hf_dir, "pytorch_model*.bin")))
        if not bins:
            raise ValueError(f"{hf_dir} holds neither *.safetensors nor pytorch_model*.bin weights")
        for path in bins:
            state.update(safe_torch_load(path))
    return config, state


def model_fields_from_hf(config: dict) -> dict:
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"Hugging Face model_type {model_type!r} is not convertible; megatron-ds converts "
                         f"{sorted(FAMILIES)}")
    unsupported = ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn")
    if model_type == "gpt2" and any(config.get(option) for option in unsupported):
        raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not "
                         "implemented by megatron-ds")
    return FAMILIES[model_type].model_fields(config)


def hf_run_config(config: dict, make_vocab_size_divisible_by: int = 128):
    """A single-rank RunConfig holding the Hugging Face model's architecture (stored in the checkpoint)."""
    from megatron.config import resolve_config

    values = dict(model_fields_from_hf(config), make_vocab_size_divisible_by=make_vocab_size_divisible_by,
                  micro_batch_size=1, global_batch_size=1, train_iters=1, lr=1e-4)
    run_config = resolve_config(values, deepspeed_config={"zero_optimization": {"stage": 0}}, world_size=1)
    return run_config.with_vocab(config["vocab_size"])


def our_weights(config: dict, state: Dict[str, torch.Tensor], model_config) -> Dict[str, torch.Tensor]:
    """Hugging Face tensors -> ours, whole and fp32, vocabulary unpadded."""
    weights = FAMILIES[config["model_type"]].from_hf(state, model_config)
    return {name: tensor.float() for name, tensor in weights.items()}


def write_checkpoint_from_hf(hf_dir: str, save_dir: str, *, make_vocab_size_divisible_by: int = 128,
                             log=print) -> str:
    """Convert ``hf_dir`` into ``save_dir/global_step0`` on an initialised single-rank world; returns the folder."""
    from megatron.checkpointing.weights_checkpoint import write_weights_checkpoint

    config, state = read_hf_folder(hf_dir)
    run_config = hf_run_config(config, make_vocab_size_divisible_by)
    weights = our_weights(config, state, run_config.model)
    folder = write_weights_checkpoint(weights, run_config, save_dir, source=hf_dir)
    copied = copy_hf_tokenizer_files(hf_dir, os.path.join(save_dir, "tokenizer"))
    log(f"> wrote {folder} from {hf_dir} ({config['model_type']}); train on it with --load {save_dir} --finetune"
        + (f"; tokenizer files in {os.path.join(save_dir, 'tokenizer')}" if copied else ""))
    return folder
