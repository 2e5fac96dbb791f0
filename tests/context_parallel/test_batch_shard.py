"""Each CP rank's batch share: its zig-zag tokens, labels, loss mask and position ids, and document ids that
rebuild the --reset-attention-mask mask exactly, on real samples (EOD-separated documents)."""

import torch

from megatron.data.context_parallel_batch import shard_batch_for_context_parallel
from megatron.data.sample_masks import make_sample
from megatron.model.context_parallel import zigzag_gather
from megatron.model.context_parallel.masks import allowed_pairs

EOD, SEQ = 0, 16


def _batch():
    rows = [torch.tensor([5, 6, 7, EOD, 8, 9, EOD, 4, 4, 4, 4, 4, EOD, 3, 3, 3, 3]),
            torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, EOD, 2, 2, 2, 2, 2, 2, 2])]
    samples = [make_sample(row, EOD, eod_mask_loss=True, reset_position_ids=True, reset_attention_mask=True)
               for row in rows]
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}


def test_shards_gather_back_to_the_batch_and_rebuild_the_document_mask():
    batch = _batch()
    for cp in (2, 4):
        shards = [shard_batch_for_context_parallel(batch, cp, rank) for rank in range(cp)]
        assert all("attention_mask" not in shard and shard["tokens"].shape == (2, SEQ // cp) for shard in shards)
        for key in ("tokens", "labels", "loss_mask", "position_ids"):
            assert torch.equal(zigzag_gather([shard[key] for shard in shards], dim=1), batch[key]), key
        for rank, shard in enumerate(shards):
            # this rank's queries against every rank's keys: the rows of the original mask, reordered
            keys = torch.cat([other["cp_positions"] for other in shards])
            key_documents = torch.cat([other["cp_documents"] for other in shards], dim=1)
            allowed = allowed_pairs(shard["cp_positions"].expand(2, -1), keys.expand(2, -1),
                                    shard["cp_documents"], key_documents, causal=True)
            expected = ~batch["attention_mask"][:, :, shard["cp_positions"]][:, :, :, keys]
            assert torch.equal(allowed, expected)
