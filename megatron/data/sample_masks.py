"""Model inputs of one sample: tokens, labels, loss mask, position ids and (optionally) the attention mask."""

from __future__ import annotations

import torch


def make_sample(
    tokens_and_last_label: torch.Tensor,
    eod: int,
    *,
    eod_mask_loss: bool = False,
    reset_position_ids: bool = False,
    reset_attention_mask: bool = False,
) -> dict:
    """From seq_length + 1 token ids [s + 1] build the tensors of one training sample:

    - tokens [s] int64, labels [s] int64 (tokens shifted by one);
    - loss_mask [s] float32: 1, or 0 where the input token is EOD if `eod_mask_loss` (as in Megatron, the
      prediction made *from* the EOD, i.e. the first token of the next document, is not trained);
    - position_ids [s] int64: 0..s-1, or restarting at 0 after every EOD if `reset_position_ids`;
    - attention_mask [1, s, s] bool, only if `reset_attention_mask`: Megatron's convention, True = masked out;
      position q may attend to k iff k <= q and both are in the same document (an EOD belongs to the document it
      ends). Without it the key is absent and the model applies its plain causal mask.
    """
    assert tokens_and_last_label.dim() == 1, tokens_and_last_label.shape
    tokens = tokens_and_last_label[:-1].contiguous()
    labels = tokens_and_last_label[1:].contiguous()
    seq_length = tokens.numel()
    is_eod = tokens == eod
    loss_mask = torch.ones(seq_length, dtype=torch.float32)
    if eod_mask_loss:
        loss_mask[is_eod] = 0.0
    sample = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask}

    positions = torch.arange(seq_length, dtype=torch.int64)
    # document[i] = number of EODs strictly before i, so an EOD counts as part of the document it closes.
    document = torch.cumsum(is_eod.to(torch.int64), 0) - is_eod.to(torch.int64)  # [s]
    if reset_position_ids:
        eod_positions = torch.nonzero(is_eod).flatten()
        document_starts = torch.cat([torch.zeros(1, dtype=torch.int64), eod_positions + 1])  # [num_docs]
        sample["position_ids"] = positions - document_starts[document]
    else:
        sample["position_ids"] = positions
    if reset_attention_mask:
        causal = positions[None, :] <= positions[:, None]  # [s, s]: query row, key column
        same_document = document[None, :] == document[:, None]
        sample["attention_mask"] = ~(causal & same_document)[None]  # [1, s, s], True = masked
    return sample
