"""Reducing the model's per-token loss to the scalar that is backpropagated."""

import torch

from megatron.core import comm, parallel_state


def masked_mean_loss(per_token_loss: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """sum(loss * mask) / sum(mask) over this micro-batch (Megatron's reduction).

    The mask (1.0 for tokens that count, 0.0 for padding or EOD tokens masked with --eod-mask-loss) has the
    loss's shape [b, s]. A micro-batch whose mask is all zero contributes 0 rather than NaN.
    """
    if per_token_loss.shape != loss_mask.shape:
        raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} differs from the per-token loss shape "
                         f"{tuple(per_token_loss.shape)}; pass the batch's loss_mask [b, s]")
    mask = loss_mask.to(per_token_loss.dtype)
    # An all-zero mask has a zero numerator too; the clamp turns 0/0 into 0 and changes nothing else.
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=torch.finfo(mask.dtype).tiny)


def context_parallel_loss(per_token_loss: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """:func:`masked_mean_loss` of a CP rank's share of the tokens, as the rank backpropagates it.

    The rank's masked sum is divided by the kept tokens of the whole micro-batch (summed over the CP group)
    and multiplied by CP: DeepSpeed averages gradients over DP x CP, and the mean of these over the CP ranks
    is the micro-batch's mean. At CP = 1 this is masked_mean_loss itself.
    """
    cp = parallel_state.get_context_parallel_world_size()
    if cp == 1:
        return masked_mean_loss(per_token_loss, loss_mask)
    mask = loss_mask.to(per_token_loss.dtype)
    kept = mask.sum().detach().clone()
    comm.all_reduce(kept, group=parallel_state.get_context_parallel_group())
    return (per_token_loss * mask).sum() / kept.clamp(min=torch.finfo(mask.dtype).tiny) * cp
