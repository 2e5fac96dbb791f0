"""The tied word embedding of a GPT pipeline under the Megatron schedules.

The first stage owns the [V/tp, h] table as a parameter; the last stage's head reads a replica
(stage_model.TiedOutputLayerReplica). Per global batch:

1. The last stage accumulates the head's gradient G in the replica's fp32 ``.grad`` over its micro-batches
   and sends it to the first stage after its last backward of the head chunk.
2. The first stage receives G just before its own last backward, which always comes later: that backward
   waits for the input gradient of the last micro-batch, which passes through every later stage. G then
   enters autograd through an identity node on the embedding output (:class:`_TiedGradientInlet`), so it
   reaches ``word_embeddings.weight`` inside a normal DeepSpeed backward: ZeRO-0/1's boundary all-reduce,
   ZeRO-2/3's reduce-scatter hooks, CPU offload and the gradient norm all see the summed gradient once.
   (A blocking all-reduce in a backward hook would deadlock: the last stage computes the head gradient
   before it sends the input gradient the first stage is waiting for.)
3. After the optimizer step the first stage broadcasts the updated table to the replica.

G carries the last stage's 1/GAS loss scaling, exactly as the gradients flowing back through the
activations do, so it is added unscaled.
"""

from typing import Optional

import deepspeed
import torch

from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.pipeline.p2p import TIED_GRAD, PeerToPeer
from megatron.pipeline.stage_model import ModelChunks, TiedOutputLayerReplica


class _GradientInlet:
    """Holds a gradient for the table until the backward that should add it."""

    def __init__(self):
        self.pending: Optional[torch.Tensor] = None

    def take(self, dtype: torch.dtype) -> Optional[torch.Tensor]:
        gradient, self.pending = self.pending, None
        return None if gradient is None else gradient.to(dtype)


class _TiedGradientInlet(torch.autograd.Function):
    """Identity on the embedding output [b, s, h]; its backward also returns the pending table gradient.

    Applied inside the word embedding's forward (a forward hook), where ZeRO-3 has gathered the weight, so
    the gradient has the weight's full shape and is accumulated by the weight's own autograd node.
    """

    @staticmethod
    def forward(ctx, embeddings, weight, inlet):
        ctx.inlet, ctx.weight_dtype = inlet, weight.dtype
        return embeddings.view_as(embeddings)

    @staticmethod
    def backward(ctx, grad_embeddings):
        return grad_embeddings, ctx.inlet.take(ctx.weight_dtype), None


class TiedEmbedding:
    """Runs steps 1-3 of the module docstring on the first and the last pipeline stage (no-op elsewhere)."""

    def __init__(self, chunks: ModelChunks):
        self.first_rank = ps.get_pipeline_model_parallel_first_rank()
        self.last_rank = ps.get_pipeline_model_parallel_last_rank()
        self.rank = comm.get_rank()
        self.table = None
        self.replica: Optional[TiedOutputLayerReplica] = None
        self.inlet = _GradientInlet()
        if self.rank == self.first_rank:
            self.table = chunks.chunks[0].embedding.word_embeddings
            self.table.register_forward_hook(self._insert_inlet)
        if self.rank == self.last_rank:
            self.replica = chunks.chunks[-1].output_layer
            assert isinstance(self.replica, TiedOutputLayerReplica), type(self.replica)

    def _insert_inlet(self, module, inputs, output):
        return _TiedGradientInlet.apply(output, module.weight, self.inlet)

    def send_head_gradient(self, p2p: PeerToPeer) -> None:
        """Last stage, after its last backward of the head chunk."""
        gradient = self.replica.master.grad
        if gradient is None:
            gradient = torch.zeros_like(self.replica.master)
        p2p.queue_send(gradient, self.first_rank, TIED_GRAD)
        self.replica.master.grad = None

    def receive_head_gradient(self, p2p: PeerToPeer) -> None:
        """First stage, right before its last backward of the global batch."""
        weight = self.table.weight
        shape = getattr(weight, "ds_shape", weight.shape)  # ZeRO-3 keeps only a partition outside forward
        self.inlet.pending = p2p.receive(shape, torch.float32, self.last_rank, TIED_GRAD)

    @torch.no_grad()
    def broadcast_table(self) -> None:
        """First stage -> last stage: the table the next forward must use (at start-up and after each step)."""
        if self.table is None and self.replica is None:
            return
        if self.table is not None:
            weight = self.table.weight
            # ZeRO-3 keeps only a partition between forwards: gather the full [V/tp, h] shard to send it.
            with deepspeed.zero.GatheredParameters([weight], enabled=hasattr(weight, "ds_id")):
                buffer = weight.detach().float().clone()
        else:
            buffer = torch.empty_like(self.replica.master)
        comm.broadcast(buffer, self.first_rank, group=ps.get_embedding_group())
        if self.replica is not None:
            self.replica.master.copy_(buffer)
