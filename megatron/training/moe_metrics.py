"""Per-step MoE figures for the log line, the metrics file and TensorBoard: the aux (+ z) loss apart from the
LM loss, and each MoE layer's expert load (kept tokens per expert, dropped tokens) summed over data parallel."""

from typing import Dict, List

import torch

from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.model.moe import collect_aux_losses, collect_expert_load


class MoEMetrics:
    def __init__(self):
        self._aux, self._micro_batches, self._load = 0.0, 0, {}

    def add_micro_batch(self, module: torch.nn.Module) -> None:
        """After a training forward: read what the MoE layers kept of it."""
        aux = collect_aux_losses(module)
        if aux is None:
            return
        self._aux += float(aux.detach())
        self._micro_batches += 1
        for key, value in collect_expert_load(module).items():
            previous = self._load.get(key)
            if isinstance(value, list):
                self._load[key] = value if previous is None else [a + b for a, b in zip(previous, value)]
            else:
                self._load[key] = value + (previous or 0)

    def step_figures(self) -> Dict[str, object]:
        """The step's mean aux loss over micro-batches and DP ranks, and the load summed over DP ranks (one
        collective); resets for the next step. Every rank must call it."""
        keys = sorted(self._load)
        flat: List[float] = [self._aux / max(self._micro_batches, 1)]
        for key in keys:
            value = self._load[key]
            flat.extend(value if isinstance(value, list) else [value])
        tensor = torch.tensor(flat, dtype=torch.float64)
        comm.all_reduce(tensor, group=ps.get_data_parallel_group())
        figures: Dict[str, object] = {"moe_aux_loss": tensor[0].item() / ps.get_data_parallel_world_size()}
        position = 1
        for key in keys:
            value = self._load[key]
            size = len(value) if isinstance(value, list) else 1
            numbers = [int(v) for v in tensor[position:position + size].tolist()]
            figures[key.replace(".", "_")] = numbers if isinstance(value, list) else numbers[0]
            position += size
        self.__init__()
        return figures
