"""Per-step MoE figures for the log line, the metrics file and TensorBoard: the aux (+ z) loss apart from the
LM loss, and each MoE layer's expert load (kept tokens per expert, dropped tokens) summed over data and tensor
parallel ranks."""

from typing import Dict, List

import torch

from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.model.moe import collect_aux_losses, collect_expert_load


class MoEMetrics:
    def __init__(self):
        self._aux, self._micro_batches, self._load = 0.0, 0, {}

    def add_micro_batch(self, module: torch.nn.Module, new_micro_batch: bool = True) -> None:
        """After a training forward: read what the MoE layers kept of it. A pipeline rank calls it for each
        of its chunks' forwards, with ``new_micro_batch`` on the first chunk's only (so the aux mean is per
        micro-batch, summed over chunks)."""
        self._micro_batches += int(new_micro_batch)
        aux = collect_aux_losses(module)
        if aux is None:
            return
        self._aux += float(aux.detach())
        for key, value in collect_expert_load(module).items():
            previous = self._load.get(key)
            if isinstance(value, list):
                self._load[key] = value if previous is None else [a + b for a, b in zip(previous, value)]
            else:
                self._load[key] = value + (previous or 0)

    def step_figures(self) -> Dict[str, object]:
        """The step's mean aux loss over micro-batches and DP ranks, and the load summed over DP (and TP) ranks;
        resets for the next step. Every rank must call it."""
        keys = sorted(self._load)
        flat: List[float] = [self._aux / max(self._micro_batches, 1)]
        for key in keys:
            value = self._load[key]
            flat.extend(value if isinstance(value, list) else [value])
        tensor = torch.tensor(flat, dtype=torch.float64)
        comm.all_reduce(tensor, group=ps.get_data_parallel_group())
        if ps.get_tensor_model_parallel_world_size() > 1:
            # MoE with TP runs under sequence parallelism: each TP rank routes its own slice of the tokens, so
            # the layer's load is the sum over TP too (the aux loss is already reduced over TP by the router)
            load = tensor[1:].clone()
            comm.all_reduce(load, group=ps.get_tensor_model_parallel_group())
            tensor[1:] = load
        figures: Dict[str, object] = {"moe_aux_loss": tensor[0].item() / ps.get_data_parallel_world_size()}
        position = 1
        for key in keys:
            value = self._load[key]
            size = len(value) if isinstance(value, list) else 1
            numbers = [int(v) for v in tensor[position:position + size].tolist()]
            figures[key.replace(".", "_")] = numbers if isinstance(value, list) else numbers[0]
            position += size
        self.__init__()
        if ps.get_pipeline_model_parallel_world_size() > 1:
            figures = _merge_pipeline_stages(figures)
        return figures


def _merge_pipeline_stages(figures: Dict[str, object]) -> Dict[str, object]:
    """Each stage holds its own layers' load and aux losses: gather them so every rank logs the whole model
    (aux losses of the stages add up to the model's; layer names are model-wide, so they do not collide)."""
    merged: Dict[str, object] = {"moe_aux_loss": 0.0}
    for stage_figures in comm.all_gather_object(figures, group=ps.get_pipeline_model_parallel_group()):
        merged["moe_aux_loss"] += stage_figures.pop("moe_aux_loss")
        merged.update(stage_figures)
    return merged
