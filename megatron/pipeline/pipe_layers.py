"""The GPT/Llama blocks in the calling convention of DeepSpeed's PipelineModule.

DeepSpeed passes one value from layer to layer (and from stage to stage). Here it is the tuple

    (hidden [s(/tp), b, h], position_ids [b, s] int64[, attention_mask [b, 1, s, s] bool])

so that per-batch position ids and attention masks (reset at document boundaries) reach every layer of every
stage. DeepSpeed's engine sends every tensor of the tuple to the next stage and sends gradients back only for
the floating-point ones, so the integer/bool tensors ride along for free. The mask is present only when the
batch has one (``--reset-attention-mask``); without it attention is plain causal.

Each adapter subclasses the model's own block, so the parameters and their names inside a layer are exactly
those of GPTModel's (see param_names.py for the full-name mapping).
"""

from typing import Tuple

import torch
from torch import nn

from megatron.core.tensor_parallel import VocabParallelEmbedding, init_method_normal
from megatron.model import (Embedding, OutputLayer, TransformerLayer, build_norm, masked_mean_loss, per_token_loss,
                            tied_head_logits)
from megatron.model.config_checks import original_vocab_size, padded_vocab_size

PipeActivations = Tuple[torch.Tensor, ...]


class EmbeddingPipe(Embedding):
    """(tokens [b, s], position_ids [b, s][, mask]) -> (hidden [s(/tp), b, h], position_ids[, mask])."""

    def forward(self, inputs: PipeActivations) -> PipeActivations:
        tokens, position_ids, *mask = inputs
        return (super().forward(tokens, position_ids), position_ids, *mask)


class TransformerLayerPipe(TransformerLayer):
    """(hidden, position_ids[, mask]) -> (hidden, position_ids[, mask])."""

    def forward(self, inputs: PipeActivations) -> PipeActivations:
        hidden_states, position_ids, *mask = inputs
        attention_mask = mask[0] if mask else None
        return (super().forward(hidden_states, position_ids, attention_mask), position_ids, *mask)


class FinalNormPipe(nn.Module):
    """(hidden, position_ids[, mask]) -> normalised hidden [s(/tp), b, h]; the head needs nothing else.

    The norm is an attribute named ``final_norm`` so its parameters are named as in GPTModel.
    """

    def __init__(self, config, *, sequence_parallel: bool = False, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.final_norm = build_norm(config, sequence_parallel=sequence_parallel, params_dtype=params_dtype)

    def forward(self, inputs: PipeActivations) -> torch.Tensor:
        return self.final_norm(inputs[0])


class OutputLayerPipe(nn.Module):
    """Untied LM head (Llama): hidden [s(/tp), b, h] -> vocab-sharded logits [s, b, V/tp]."""

    def __init__(self, config, *, sequence_parallel: bool = False, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.output_layer = OutputLayer(config, sequence_parallel=sequence_parallel, params_dtype=params_dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output_layer(hidden_states)


class TiedOutputEmbeddingPipe(nn.Module):
    """The last stage's copy of the word-embedding table for the tied LM head (GPT).

    Built by the TiedLayerSpec of the head; DeepSpeed broadcasts the first stage's table into it at start-up
    and sums the two copies' gradients before every optimizer step. It holds only ``word_embeddings`` (no
    position table, which the last stage never uses), named as in the first stage's embedding, so both copies
    map to ``embedding.word_embeddings.weight``.
    """

    def __init__(self, config, *, sequence_parallel: bool = False, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        self.vocab_size = original_vocab_size(config)
        self.word_embeddings = VocabParallelEmbedding(padded_vocab_size(config), config.hidden_size,
                                                      init_method=init_method_normal(config.init_method_std),
                                                      params_dtype=params_dtype, vocab_size=self.vocab_size)


def tied_lm_head(module: TiedOutputEmbeddingPipe, hidden_states: torch.Tensor) -> torch.Tensor:
    """forward_fn of the tied head's TiedLayerSpec: logits [s, b, V/tp] from the shared [V/tp, h] table."""
    return tied_head_logits(hidden_states, module.word_embeddings.weight, module.sequence_parallel,
                            module.vocab_size)


def pipe_loss(logits: torch.Tensor, labels_and_mask: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """PipelineModule loss_fn: the masked mean of the per-token cross entropy, as the non-pipeline loop."""
    labels, loss_mask = labels_and_mask
    return masked_mean_loss(per_token_loss(logits, labels), loss_mask)
