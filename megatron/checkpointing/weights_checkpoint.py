"""Whole model weights (our names, TP merged, vocabulary unpadded) -> a checkpoint that training can --load.

Shared by the Hugging Face and Megatron importers: the weights go into a real GPTModel at TP=1 (so names and
shapes are checked against the model itself) and are saved through a ZeRO-0 DeepSpeed engine with the same
atomic save as training, at iteration 0, without optimizer state. Train on it with ``--finetune``; another
TP/PP/ZeRO layout adds ``--universal-checkpoint``. Needs an initialised single-rank world.
"""

from typing import Dict, Optional

import torch


def _padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    if tensor.shape[0] > rows:
        return tensor[:rows]  # a source padded further than we do: its extra rows are padding too
    return torch.cat([tensor, tensor.new_zeros((rows - tensor.shape[0],) + tuple(tensor.shape[1:]))])


def write_weights_checkpoint(weights: Dict[str, torch.Tensor], run_config, save_dir: str, *, source: str,
                             tokenizer: Optional[dict] = None) -> str:
    """Save ``weights`` as ``save_dir/global_step0``; returns the folder."""
    import deepspeed

    from megatron.checkpointing.save import save_checkpoint
    from megatron.core import parallel_state as ps
    from megatron.model import GPTModel

    ps.initialize_model_parallel(1)
    try:
        model = GPTModel(run_config.model, moe_config=run_config.moe)
        parameters = dict(model.named_parameters())
        unknown = sorted(set(weights) - set(parameters))
        if unknown:
            raise ValueError(f"{source} has weights the model does not: {unknown}")
        missing = sorted(set(parameters) - set(weights))
        if missing:
            raise ValueError(f"{source} lacks weights for {missing}")
        padded = {name: _padded(weights[name], param.shape[0]) if getattr(param, "sharding", None) == "vocab"
                  else weights[name] for name, param in parameters.items()}
        wrong = [f"{name}: {tuple(tensor.shape)} vs the model's {tuple(parameters[name].shape)}"
                 for name, tensor in padded.items() if tensor.shape != parameters[name].shape]
        if wrong:
            raise ValueError(f"{source} does not fit the model its arguments describe: " + "; ".join(wrong))
        with torch.no_grad():
            model.load_state_dict(padded, strict=True)
        engine, _, _, _ = deepspeed.initialize(model=model, config={
            "train_micro_batch_size_per_gpu": 1, "train_batch_size": 1, "zero_optimization": {"stage": 0},
            "steps_per_print": 10 ** 9}, mpu=ps.get_deepspeed_mpu())
        folder = save_checkpoint(engine, save_dir, iteration=0, consumed_train_samples=0, config=run_config,
                                 tokenizer=tokenizer)
        engine.destroy()
    finally:
        ps.destroy_model_parallel()
    return folder
