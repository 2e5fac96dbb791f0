"""Pure rank arithmetic for the (TP, CP, DP, PP) grid and the expert grid carved out of DP.

Rank order (fastest-varying first): tensor-parallel, context-parallel, data-parallel, pipeline-parallel, i.e.

    global_rank = tp_rank + TP * (cp_rank + CP * (dp_rank + DP * pp_rank))

This is Megatron-LM's order (tp-cp-ep-dp-pp) and, with CP = 1, DeepSpeed's ``PipeModelDataParallelTopology``
order (axes pipe, data, model), so DeepSpeed's pipeline engine and our groups agree on every rank. TP
neighbours are adjacent ranks, which keeps the chattiest group inside a node; the context-parallel ring (or
Ulysses all-to-all) is next, since it moves K/V every layer.

Context-parallel ranks hold the same parameters and see different tokens of the same sequences, so for
gradients they are data-parallel: the "data + context" groups (DP x CP) are what gradient reduction and ZeRO
partitioning use, while the plain data-parallel groups (one CP position) are what the data loader shards
samples over.

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
    context_parallel_size: int = 1

    def __post_init__(self):
        tp, pp, ep, cp, world = (self.tensor_model_parallel_size, self.pipeline_model_parallel_size,
                                 self.expert_model_parallel_size, self.context_parallel_size, self.world_size)
        for name, value in (("world size", world), ("tensor-model-parallel size", tp),
                            ("pipeline-model-parallel size", pp), ("expert-model-parallel size", ep),
                            ("context-parallel size", cp)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if world % (tp * cp * pp) != 0:
            what = f"TP {tp} x PP {pp}" if cp == 1 else f"TP {tp} x CP {cp} x PP {pp}"
            raise ValueError(
                f"world size {world} is not divisible by tensor-model-parallel size {tp} x "
                + ("" if cp == 1 else f"context-parallel size {cp} x ")
                + f"pipeline-model-parallel size {pp} = {tp * cp * pp}; choose {what} whose product divides "
                f"{world} (or launch a multiple of {tp * cp * pp} processes)")
        if self.data_parallel_size % ep != 0:
            raise ValueError(
                f"expert-model-parallel size {ep} must divide the data-parallel size {self.data_parallel_size} "
                f"(= world {world} / (TP {tp} x PP {pp})); experts are sharded across data-parallel ranks")

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // (self.tensor_model_parallel_size * self.context_parallel_size
                                   * self.pipeline_model_parallel_size)

    @property
    def expert_data_parallel_size(self) -> int:
        return self.data_parallel_size // self.expert_model_parallel_size

    def rank(self, tp_rank: int, dp_rank: int, pp_rank: int, cp_rank: int = 0) -> int:
        tp, cp, dp = self.tensor_model_parallel_size, self.context_parallel_size, self.data_parallel_size
        return tp_rank + tp * (cp_rank + cp * (dp_rank + dp * pp_rank))

    def coordinates(self, rank: int):
        """(tp_rank, dp_rank, pp_rank) of a global rank (its CP rank: :meth:`context_parallel_rank`)."""
        tp, cp, dp = self.tensor_model_parallel_size, self.context_parallel_size, self.data_parallel_size
        return rank % tp, (rank // (tp * cp)) % dp, rank // (tp * cp * dp)

    def context_parallel_rank(self, rank: int) -> int:
        return (rank // self.tensor_model_parallel_size) % self.context_parallel_size

    def _ranges(self):
        return range(self.tensor_model_parallel_size), range(self.data_parallel_size), \
            range(self.pipeline_model_parallel_size), range(self.context_parallel_size)

    def tensor_parallel_groups(self) -> List[List[int]]:
        tps, dps, pps, cps = self._ranges()
        return [[self.rank(t, d, p, c) for t in tps] for p in pps for d in dps for c in cps]

    def context_parallel_groups(self) -> List[List[int]]:
        """Ranks that split the tokens of the same sequences (the ring, or the Ulysses all-to-all group)."""
        tps, dps, pps, cps = self._ranges()
        return [[self.rank(t, d, p, c) for c in cps] for p in pps for d in dps for t in tps]

    def data_parallel_groups(self) -> List[List[int]]:
        """Ranks that see different samples (one CP position): the data loader shards over these."""
        tps, dps, pps, cps = self._ranges()
        return [[self.rank(t, d, p, c) for d in dps] for p in pps for c in cps for t in tps]

    def data_context_parallel_groups(self) -> List[List[int]]:
        """DP x CP, in rank order: every rank holding the same parameters, so gradients reduce over these."""
        tps, dps, pps, cps = self._ranges()
        return [[self.rank(t, d, p, c) for d in dps for c in cps] for p in pps for t in tps]

    def pipeline_parallel_groups(self) -> List[List[int]]:
        tps, dps, pps, cps = self._ranges()
        return [[self.rank(t, d, p, c) for p in pps] for d in dps for c in cps for t in tps]

    def model_parallel_groups(self) -> List[List[int]]:
        """All ranks holding one full model replica (TP x PP), ordered by (pp, tp); one per (dp, cp)."""
        tps, dps, pps, cps = self._ranges()
        return [[self.rank(t, d, p, c) for p in pps for t in tps] for d in dps for c in cps]

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
                + (f"CP {self.context_parallel_size} x " if self.context_parallel_size > 1 else "")
                + f"DP {self.data_parallel_size} x PP {self.pipeline_model_parallel_size}"
                + (f" (EP {self.expert_model_parallel_size} inside DP)" if self.expert_model_parallel_size > 1 else ""))
