"""Conversion between megatron-ds checkpoints and Hugging Face transformers (GPT-2 and Llama layouts)."""

from megatron.checkpointing.hf.export import export_to_hf, hf_family, hf_state_and_config
from megatron.checkpointing.hf.import_hf import read_hf_folder, write_checkpoint_from_hf

__all__ = ["export_to_hf", "hf_family", "hf_state_and_config", "read_hf_folder", "write_checkpoint_from_hf"]
