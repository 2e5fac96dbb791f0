"""Cross entropy over vocab-sharded logits, without ever gathering the full vocabulary.

Each TP rank holds logits[..., V/p]. Three all-reduces over the TP group give the max logit, the target's
logit (owned by one rank) and the softmax denominator. Backward is computed in closed form from the saved
softmax, so memory stays at one [.., V/p] tensor.

Padding ids (the rows the embedding table gains so that TP ranks hold equal slices) are not classes: the
model sets their logits to -inf (:func:`mask_vocab_padding_`), so they take no part in the softmax, get no
gradient, and can never be predicted or sampled; the loss is then the same for every TP size's padding.

Label smoothing follows ``torch.nn.functional.cross_entropy``: with smoothing eps over the V real classes,
loss = (1 - eps) * nll(target) + eps * mean_v(-log p_v). At TP = 1 that is exactly ``F.cross_entropy`` in
fp32, which is what runs there (its fused kernels are faster).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.utils import vocab_range


def _tp_all_reduce(tensor, op=comm.ReduceOp.SUM):
    if ps.get_tensor_model_parallel_world_size() > 1:
        comm.all_reduce(tensor, op=op, group=ps.get_tensor_model_parallel_group())
    return tensor


def real_vocab_columns(vocab_size: int, partition_vocab: int) -> int:
    """How many of this TP rank's ``partition_vocab`` logit columns are real ids (the rest are padding)."""
    start = ps.get_tensor_model_parallel_rank() * partition_vocab
    return max(0, min(partition_vocab, vocab_size - start))


def mask_vocab_padding_(vocab_parallel_logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Set the logits of padding ids (>= ``vocab_size``) on this rank's [.., V/tp] slice to -inf, in place.

    Only the padding columns are written (no pass over the real ones); autograd gives them zero gradient.
    """
    real = real_vocab_columns(vocab_size, vocab_parallel_logits.size(-1))
    if real < vocab_parallel_logits.size(-1):
        vocab_parallel_logits[..., real:] = float("-inf")
    return vocab_parallel_logits


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits, target, label_smoothing, vocab_size):
        world, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
        partition_vocab = vocab_parallel_logits.size(-1)
        global_vocab = partition_vocab * world
        vocab_start, vocab_end = vocab_range(global_vocab, rank, world)
        real_vocab = global_vocab if vocab_size is None else vocab_size

        # Subtract the global max for a stable softmax (do not modify the caller's logits).
        logits = vocab_parallel_logits.float()
        logits_max = _tp_all_reduce(logits.max(dim=-1)[0], comm.ReduceOp.MAX)
        logits = logits - logits_max.unsqueeze(-1)

        # The target's logit lives on exactly one rank; the others contribute zero to the sum.
        outside = (target < vocab_start) | (target >= vocab_end)
        local_target = (target - vocab_start).masked_fill(outside, 0)
        predicted = logits.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        predicted = _tp_all_reduce(predicted)

        if label_smoothing > 0:
            # mean_v(-log p_v) = log_sum_exp - mean_v(logits), with the mean over the real vocabulary.
            real_columns = real_vocab_columns(real_vocab, partition_vocab)
            sum_logits = _tp_all_reduce(logits[..., :real_columns].sum(dim=-1))

        exp_logits = logits.exp_()  # in place: ``logits`` is our own shifted copy and is not needed after this
        sum_exp = _tp_all_reduce(exp_logits.sum(dim=-1))
        log_sum_exp = sum_exp.log()
        loss = log_sum_exp - predicted
        if label_smoothing > 0:
            smooth_loss = log_sum_exp - sum_logits / real_vocab
            loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth_loss

        softmax = exp_logits.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_target, outside)
        ctx.label_smoothing, ctx.real_vocab, ctx.real_columns = label_smoothing, real_vocab, \
            real_vocab_columns(real_vocab, partition_vocab)
        ctx.input_dtype = vocab_parallel_logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        softmax, local_target, outside = ctx.saved_tensors
        eps = ctx.label_smoothing
        # d loss / d logits = softmax - (1 - eps) * onehot(target) - eps / V
        grad = softmax
        on_this_rank = (~outside).to(grad.dtype)
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -(1.0 - eps) * on_this_rank.unsqueeze(-1))
        if eps > 0:
            grad[..., :ctx.real_columns].sub_(eps / ctx.real_vocab)
        grad.mul_(grad_output.unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None, None


def vocab_parallel_cross_entropy(vocab_parallel_logits: torch.Tensor, target: torch.Tensor,
                                 label_smoothing: float = 0.0, vocab_size: Optional[int] = None) -> torch.Tensor:
    """Per-token loss [..] for logits [.., V/p] sharded over the TP group and integer targets [..].

    ``vocab_size``: the real vocabulary when the logits carry padding columns (already -inf, see
    :func:`mask_vocab_padding_`); label smoothing spreads over the real ids only.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if ps.get_tensor_model_parallel_world_size() == 1:
        # The whole vocabulary is here: torch's fused log-softmax does in two passes over the logits (and two
        # in backward) what the sharded form needs five for. Same definition, fp32 as above.
        logits = vocab_parallel_logits
        if label_smoothing > 0 and vocab_size is not None:
            logits = logits[..., :vocab_size]  # smoothing must not spread over the -inf padding columns
        loss = F.cross_entropy(logits.float().flatten(0, -2), target.flatten(), reduction="none",
                               label_smoothing=label_smoothing)
        return loss.view(target.shape)
    return _VocabParallelCrossEntropy.apply(vocab_parallel_logits, target, label_smoothing, vocab_size)
