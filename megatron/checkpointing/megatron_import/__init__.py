"""Importing Megatron-DeepSpeed and Megatron-LM checkpoints (weights) into a native megatron-ds checkpoint.

    sources.py     find the format of a folder and read its per-rank tensors (weights-only unpickling)
    arguments.py   the pickled Megatron arguments -> our ModelConfig fields, and the fused-QKV row order
    merge.py       per-rank tensors in Megatron names -> whole tensors in our GPTModel names
    convert.py     the whole conversion: source folder -> <save>/global_step0 (+ tokenizer files)
"""

from megatron.checkpointing.megatron_import.convert import convert_megatron_checkpoint
from megatron.checkpointing.megatron_import.sources import detect_megatron_checkpoint

__all__ = ["convert_megatron_checkpoint", "detect_megatron_checkpoint"]
