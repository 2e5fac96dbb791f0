"""Context parallelism: attention over a sequence split across the ranks of the context-parallel group.

- :mod:`.zigzag`: which tokens each rank holds (2 CP load-balanced chunks for causal masks).
- :mod:`.ring_attention`: K/V passed around the ring, online-softmax merge (``--context-parallel-size``).
- :mod:`.ulysses`: all-to-all heads <-> sequence around local attention (``--ds-sequence-parallel-size``).

Both take the positions and document ids of their tokens, so causal and document (--reset-attention-mask)
masks are built from global positions whatever order the tokens arrive in.
"""

from megatron.model.context_parallel.masks import ContextParallelMask
from megatron.model.context_parallel.ring_attention import ring_attention
from megatron.model.context_parallel.ulysses import ulysses_attention
from megatron.model.context_parallel.zigzag import zigzag_gather, zigzag_indices, zigzag_shard

__all__ = ["ContextParallelMask", "ring_attention", "ulysses_attention", "zigzag_indices", "zigzag_shard",
           "zigzag_gather"]
