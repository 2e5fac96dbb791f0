"""Activations forward and gradients backward between pipeline stages, with batched isend/irecv.

Each message type travels on its own tag:

    ACTIVATION  stage r -> r+1 (mod PP): a virtual stage's output hidden states
    GRADIENT    stage r -> r-1 (mod PP): the gradient of a virtual stage's input
    TIED_GRAD   last stage -> first stage: the LM head's gradient of the tied embedding table

Messages with the same (sender, receiver, tag) are matched in posting order, and both sides post them in
the schedule's order, so every receive gets the right tensor. The tags matter at PP=2, where the previous and
the next rank are the same peer: without them an activation and a gradient of the same shape posted in one
batch can be swapped silently (Megatron-Core's batched interleaved schedule does exactly that at PP=2).

Sends are asynchronous. A stage's output is queued and posted in one batch with the receive of its next
operation's input (Megatron's send_forward_recv_backward pairing), or on its own before a computation that
receives nothing. A rank therefore only ever blocks on a receive, with all its earlier sends posted, and
waits for its sends at the end of the step: any schedule whose operations are in dependency order completes.

"""

from typing import List, Sequence

import torch

from megatron.core import comm

ACTIVATION, GRADIENT, TIED_GRAD = 1, 2, 3


class PeerToPeer:
    """Posts sends and receives for one global batch and keeps each send alive until it completes."""

    def __init__(self, previous_rank: int, next_rank: int):
        self.previous_rank, self.next_rank = previous_rank, next_rank
        self._queued: List[comm.P2POp] = []
        self._in_flight: List[tuple] = []  # (request, tensor): the tensor must outlive its send

    def queue_send(self, tensor: torch.Tensor, peer: int, tag: int) -> None:
        """Send ``tensor`` with the next receive (one batched call), or at the next :meth:`post`."""
        self._queued.append(comm.send_op(tensor.detach().contiguous(), peer, tag=tag))

    def receive(self, shape: Sequence[int], dtype: torch.dtype, peer: int, tag: int) -> torch.Tensor:
        """Posts the queued sends and this receive as one batch, and waits for the receive only."""
        buffer = torch.empty(tuple(shape), dtype=dtype, device=_device())
        requests = self._post(self._queued + [comm.recv_op(buffer, peer, tag=tag)])
        requests[-1].wait()
        return buffer

    def post(self) -> None:
        """Posts the queued sends without waiting (before a computation that needs no receive)."""
        self._post(self._queued)

    def finish(self) -> None:
        """Posts what is queued and waits for every send of this step (call before the optimizer step)."""
        self.post()
        for request, _ in self._in_flight:
            request.wait()
        self._in_flight = []

    def _post(self, operations: List[comm.P2POp]) -> list:
        if not operations:
            return []
        requests = comm.batch_isend_irecv(operations)
        sends = [(request, op.tensor) for request, op in zip(requests, operations) if op.op == "isend"]
        self._in_flight.extend(sends)
        self._queued = []
        return requests

    def receive_activation(self, shape, dtype) -> torch.Tensor:
        return self.receive(shape, dtype, self.previous_rank, ACTIVATION)

    def receive_gradient(self, shape, dtype) -> torch.Tensor:
        return self.receive(shape, dtype, self.next_rank, GRADIENT)

    def send_activation(self, tensor: torch.Tensor) -> None:
        self.queue_send(tensor, self.next_rank, ACTIVATION)

    def send_gradient(self, tensor: torch.Tensor) -> None:
        self.queue_send(tensor, self.previous_rank, GRADIENT)


def _device():
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().current_device_name()
