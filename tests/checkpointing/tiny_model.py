"""A tiny tensor-parallel language model for engine-level checkpoint tests.

It uses every sharding kind the real GPT model declares (vocab-parallel embedding tied to the LM head,
column- and row-parallel linears, TP-replicated norms and biases) and draws dropout from both random
streams (the default generator on replicated activations, the tracked TP generator on sharded ones), so a
resume that forgets any RNG state or any parameter shows up as a loss difference. Its full weights do not
depend on the TP size (the TP layers initialise full weights and slice), so runs at TP=1 and TP=2 are twins.
"""

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core.tensor_parallel import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                           get_rng_tracker, linear_with_sharded_weight, mark_replicated,
                                           vocab_parallel_cross_entropy)

VOCAB, HIDDEN, FFN, LAYERS, SEQ = 64, 16, 32, 2, 8


class TinyBlock(nn.Module):
    def __init__(self, dropout: float, ffn: int):
        super().__init__()
        self.norm = nn.LayerNorm(HIDDEN)
        mark_replicated(self.norm.weight)
        mark_replicated(self.norm.bias)
        self.fc1 = ColumnParallelLinear(HIDDEN, ffn)
        self.fc2 = RowParallelLinear(ffn, HIDDEN, input_is_parallel=True)
        self.dropout = dropout

    def forward(self, x):  # x: [b, s, h], replicated over TP
        inner = F.gelu(self.fc1(self.norm(x)))  # [b, s, ffn/tp], sharded over TP
        with get_rng_tracker().fork():
            inner = F.dropout(inner, p=self.dropout, training=self.training)
        return x + F.dropout(self.fc2(inner), p=self.dropout, training=self.training)


class TinyLM(nn.Module):
    """forward(tokens [b, s], labels=[b, s]) -> per-token loss [b, s] (GPTModel's training signature)."""

    def __init__(self, dropout: float = 0.1, ffn: int = FFN):
        super().__init__()
        self.embedding = VocabParallelEmbedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(TinyBlock(dropout, ffn) for _ in range(LAYERS))
        self.final_norm = nn.LayerNorm(HIDDEN)
        mark_replicated(self.final_norm.weight)
        mark_replicated(self.final_norm.bias)

    def forward(self, tokens, position_ids=None, attention_mask=None, labels=None):
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x)
        logits = linear_with_sharded_weight(self.final_norm(x), self.embedding.weight)  # [b, s, V/tp]
        return vocab_parallel_cross_entropy(logits, labels)

    def universal_checkpoint_info(self) -> dict:
        """DeepSpeed's declaration of how each parameter is split (read by ds_to_universal)."""
        return {
            "tp_replicated_parameter_patterns": [r".*norm\.weight$", r".*norm\.bias$", r".*fc2\.bias$"],
            "parameter_with_row_parallelism_patterns": [r".*fc2\.weight$"],
            "vocabulary_parameter_patterns": [r"embedding\.weight$"],
            "original_vocab_size": VOCAB,
        }


def global_batch_tokens(step: int, global_batch: int) -> torch.Tensor:
    """The global batch of ``step``: the same tokens for every layout, so runs can be compared."""
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (global_batch, SEQ + 1), generator=generator)


def micro_batches(consumed_samples: int, micro: int, gas: int, dp: int, dp_rank: int):
    """This DP rank's micro-batches from ``consumed_samples`` on, as the training loop consumes them."""
    global_batch = micro * gas * dp
    step = consumed_samples // global_batch
    while True:
        tokens = global_batch_tokens(step, global_batch)
        for micro_step in range(gas):
            start = (micro_step * dp + dp_rank) * micro
            chunk = tokens[start:start + micro]
            yield {"tokens": chunk[:, :-1], "labels": chunk[:, 1:], "loss_mask": torch.ones(micro, SEQ)}
        step += 1
