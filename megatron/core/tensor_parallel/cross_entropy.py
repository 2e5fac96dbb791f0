"""Cross entropy over vocab-sharded logits, without ever gathering the full vocabulary.

Each TP rank holds logits[..., V/p]. Three all-reduces over the TP group give the max logit, the target's
logit (owned by one rank) and the softmax denominator. Backward is computed in closed form from the saved
softmax, so memory stays at one [.., V/p] tensor.

Label smoothing follows ``torch.nn.functional.cross_entropy``: with smoothing eps over V classes,
loss = (1 - eps) * nll(target) + eps * mean_v(-log p_v), where V is the (padded) vocabulary of the logits.
At TP = 1 that is exactly ``F.cross_entropy`` in fp32, which is what runs there (its fused kernels are faster).
"""

import torch
import torch.nn.functional as F

from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.utils import vocab_range


def _tp_all_reduce(tensor, op=comm.ReduceOp.SUM):
    if ps.get_tensor_model_parallel_world_size() > 1:
        comm.all_reduce(tensor, op=op, group=ps.get_tensor_model_parallel_group())
    return tensor


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits, target, label_smoothing):
        world, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
        partition_vocab = vocab_parallel_logits.size(-1)
        global_vocab = partition_vocab * world
        vocab_start, vocab_end = vocab_range(global_vocab, rank, world)

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
            # mean_v(-log p_v) = log_sum_exp - mean_v(logits), with the mean over the global vocabulary.
            sum_logits = _tp_all_reduce(logits.sum(dim=-1))

        exp_logits = logits.exp_()  # in place: ``logits`` is our own shifted copy and is not needed after this
        sum_exp = _tp_all_reduce(exp_logits.sum(dim=-1))
        log_sum_exp = sum_exp.log()
        loss = log_sum_exp - predicted
        if label_smoothing > 0:
            smooth_loss = log_sum_exp - sum_logits / global_vocab
            loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth_loss

        softmax = exp_logits.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_target, outside)
        ctx.label_smoothing, ctx.global_vocab = label_smoothing, global_vocab
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
            grad.sub_(eps / ctx.global_vocab)
        grad.mul_(grad_output.unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None


def vocab_parallel_cross_entropy(vocab_parallel_logits: torch.Tensor, target: torch.Tensor,
                                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-token loss [..] for logits [.., V/p] sharded over the TP group and integer targets [..]."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if ps.get_tensor_model_parallel_world_size() == 1:
        # The whole vocabulary is here: torch's fused log-softmax does in two passes over the logits (and two
        # in backward) what the sharded form needs five for. Same definition, fp32 as above.
        loss = F.cross_entropy(vocab_parallel_logits.float().flatten(0, -2), target.flatten(), reduction="none",
                               label_smoothing=label_smoothing)
        return loss.view(target.shape)
    return _VocabParallelCrossEntropy.apply(vocab_parallel_logits, target, label_smoothing)
