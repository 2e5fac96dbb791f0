"""eod_mask_loss / reset_position_ids / reset_attention_mask on a hand-made sample, and vs Megatron's loop."""

import torch

from megatron.data.sample_masks import make_sample

EOD = 0
# Two full documents and the start of a third; the 8th token is only a label.
SAMPLE = torch.tensor([5, 6, EOD, 7, 8, EOD, 9, 4])


def test_plain_sample_is_tokens_and_shifted_labels_without_mask():
    sample = make_sample(SAMPLE, EOD)
    assert sample["tokens"].tolist() == [5, 6, 0, 7, 8, 0, 9]
    assert sample["labels"].tolist() == [6, 0, 7, 8, 0, 9, 4]
    assert sample["loss_mask"].tolist() == [1.0] * 7
    assert sample["position_ids"].tolist() == list(range(7))
    assert "attention_mask" not in sample
    assert sample["tokens"].dtype == torch.int64 and sample["loss_mask"].dtype == torch.float32


def test_documented_tensors_on_a_hand_made_example():
    sample = make_sample(SAMPLE, EOD, eod_mask_loss=True, reset_position_ids=True, reset_attention_mask=True)
    assert sample["loss_mask"].tolist() == [1, 1, 0, 1, 1, 0, 1]
    assert sample["position_ids"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    # True = masked out. Row = query, column = key; documents are tokens 0-2, 3-5 and 6.
    expected_masked = [
        [0, 1, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1],
        [1, 1, 1, 0, 1, 1, 1],
        [1, 1, 1, 0, 0, 1, 1],
        [1, 1, 1, 0, 0, 0, 1],
        [1, 1, 1, 1, 1, 1, 0],
    ]
    assert sample["attention_mask"].dtype == torch.bool
    assert sample["attention_mask"].shape == (1, 7, 7)
    assert sample["attention_mask"][0].int().tolist() == expected_masked


def megatron_masks(tokens, eod, reset_position_ids, reset_attention_mask, eod_mask_loss):
    """Megatron-LM's get_ltor_masks_and_position_ids for one sample, written as its plain loop."""
    s = len(tokens)
    attention = torch.tril(torch.ones(s, s))
    loss_mask = torch.ones(s)
    if eod_mask_loss:
        loss_mask[tokens == eod] = 0.0
    position_ids = torch.arange(s)
    previous = 0
    for i in (tokens == eod).nonzero().flatten().tolist():
        if reset_attention_mask:
            attention[i + 1:, : i + 1] = 0
        if reset_position_ids:
            position_ids[i + 1:] -= i + 1 - previous
            previous = i + 1
    return loss_mask, position_ids, attention < 0.5


def test_random_samples_match_megatron_loop():
    generator = torch.Generator().manual_seed(0)
    for trial in range(20):
        tokens = torch.randint(0, 4, (33,), generator=generator)  # EOD (0) is frequent, incl. first/last slots
        for flags in [(True, True, True), (True, False, False), (False, True, False), (False, False, True)]:
            reset_position_ids, reset_attention_mask, eod_mask_loss = flags
            ours = make_sample(tokens, EOD, eod_mask_loss=eod_mask_loss, reset_position_ids=reset_position_ids,
                               reset_attention_mask=reset_attention_mask)
            loss_mask, position_ids, masked = megatron_masks(tokens[:-1], EOD, reset_position_ids,
                                                            reset_attention_mask, eod_mask_loss)
            assert torch.equal(ours["loss_mask"], loss_mask)
            assert torch.equal(ours["position_ids"], position_ids)
            if reset_attention_mask:
                assert torch.equal(ours["attention_mask"][0], masked)
            else:
                assert "attention_mask" not in ours
