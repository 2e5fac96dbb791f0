"""Pure rank arithmetic for the (TP, DP, PP) grid and the expert grid carved out of DP.

Rank order (fastest-varying first): tensor-parallel, data-parallel, pipeline-parallel, i.e.

    global_rank = tp_rank + TP * (dp_rank + DP * pp_rank)

This is Megatron-LM's order and DeepSpeed's ``PipeModelDataParallelTopology`` order (axes pipe, data, model),
so DeepSpeed's pipeline engine and our groups agree on every rank. TP neighbours are adjacent ranks, which
keeps the chattiest group inside a node.

Expert parallelism splits each data-parallel group into consecutive chunks of EP ranks (the expert-parallel
groups); ranks at the same position of different chunks form the expert-data-parallel groups. This is the
assignment DeepSpeed's MoE uses with an mpu (``_get_expert_parallel_ranks``), so both agree.

Nothing here touches torch.distributed, so it is testable and usable before any process group exists.
"""

from dataclasses import dataclass
from typing import List


@dataclass(frozen=True)
class ParallelLayout:
    world_size: int
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    expert_model_parallel_size: int = 1

    def __post_init__(self):
        tp, pp, ep, world = (self.tensor_model_parallel_size, self.pipeline_model_parallel_size,
                             self.expert_model_parallel_size, self.world_size)
        for name, value in (("world size", world), ("tensor-model-parallel size", tp),
                            ("pipeline-model-parallel size", pp), ("expert-model-parallel size", ep)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if world % (tp * pp) != 0:
            raise ValueError(
                f"world size {world} is not divisible by tensor-model-parallel size {tp} x "
                f"pipeline-model-parallel size {pp} = {tp * pp}; choose TP and PP whose product divides {world} "
                f"(or launch a multiple of {tp * pp} processes)")
        if self.data_parallel_size % ep != 0:
            raise ValueError(
                f"expert-model-parallel size {ep} must divide the data-parallel size {self.data_parallel_size} "
                f"(= world {world} / (TP {tp} x PP {pp})); experts are sharded across data-parallel ranks")

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // (self.tensor_model_parallel_size * self.pipeline_model_parallel_size)

    @property
    def expert_data_parallel_size(self) -> int:
        return self.data_parallel_size // self.expert_model_parallel_size

    def rank(self, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        tp, dp = self.tensor_model_parallel_size, self.data_parallel_size
        return tp_rank + tp * (dp_rank + dp * pp_rank)

    def coordinates(self, rank: int):
        """(tp_rank, dp_rank, pp_rank) of a global rank."""
        tp, dp = self.tensor_model_parallel_size, self.data_parallel_size
        return rank % tp, (rank // tp) % dp, rank // (tp * dp)

    def _ranges(self):
        return range(self.tensor_model_parallel_size), range(self.data_parallel_size), \
            range(self.pipeline_model_parallel_size)

    def tensor_parallel_groups(self) -> List[List[int]]:
        tps, dps, pps = self._ranges()
        return [[self.rank(t, d, p) for t in tps] for p in pps for d in dps]

    def data_parallel_groups(self) -> List[List[int]]:
        tps, dps, pps = self._ranges()
        return [[self.rank(t, d, p) for d in dps] for p in pps for t in tps]

    def pipeline_parallel_groups(self) -> List[List[int]]:
        tps, dps, pps = self._ranges()
        return [[self.rank(t, d, p) for p in pps] for d in dps for t in tps]

    def model_parallel_groups(self) -> List[List[int]]:
        """All ranks holding one full model replica (TP x PP), ordered by (pp, tp)."""
        tps, dps, pps = self._ranges()
        return [[self.rank(t, d, p) for p in pps for t in tps] for d in dps]

    def embedding_groups(self) -> List[List[int]]:
        """First and last pipeline stage of each pipeline: they share the tied word embedding."""
        return [sorted({ranks[0], ranks[-1]}) for ranks in self.pipeline_parallel_groups()]

    def position_embedding_groups(self) -> List[List[int]]:
        return [[ranks[0]] for ranks in self.pipeline_parallel_groups()]

    def expert_parallel_groups(self) -> List[List[int]]:
        ep = self.expert_model_parallel_size
        return [dp_ranks[i:i + ep] for dp_ranks in self.data_parallel_groups()
                for i in range(0, len(dp_ranks), ep)]

    def expert_data_parallel_groups(self) -> List[List[int]]:
        ep = self.expert_model_parallel_size
        groups = []
        for dp_ranks in self.data_parallel_groups():
            chunks = [dp_ranks[i:i + ep] for i in range(0, len(dp_ranks), ep)]
            groups.extend([list(column) for column in zip(*chunks)])
        return groups

    def describe(self) -> str:
        return (f"world {self.world_size} = TP {self.tensor_model_parallel_size} x "
                f"DP {self.data_parallel_size} x PP {self.pipeline_model_parallel_size}"
                + (f" (EP {self.expert_model_parallel_size} inside DP)" if self.expert_model_parallel_size > 1 else ""))
