"""Reducing the model's per-token loss to the scalar that is backpropagated."""

import torch


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
