"""GPTModel: embedding -> N transformer layers -> final norm -> LM head, for GPT-2 and Llama families.

The family is entirely in the config: GPT-2 is learned positions + LayerNorm + GELU + biases + tied head;
Llama is RoPE + RMSNorm + SwiGLU + grouped-query attention + no biases + untied head.

Pieces (each usable alone, e.g. as pipeline stages):
    embedding     Embedding            (pre_process only)   tokens [b, s] -> hidden [s, b, h]
    layers        ModuleList[TransformerLayer]              hidden -> hidden
    final_norm    LayerNorm | RMSNorm  (post_process only)
    output_layer  OutputLayer          (post_process and untied only; tied heads reuse
                                        embedding.word_embeddings.weight)
Hidden states are [s, b, h], or this TP rank's [s/tp, b, h] with sequence parallelism.

Every parameter's initial value depends only on ``init_seed``, its name in the whole model and its full shape
(megatron/core/tensor_parallel/initialization.py), and the logits of vocabulary padding are -inf: one seed
gives the same model, computing the same function, at every TP size, pipeline split and ZeRO stage.
"""

from typing import Optional

import torch
from torch import nn

from megatron.core.tensor_parallel import deferred_initialization, initialize_parameters
from megatron.model.checkpoint_info import build_universal_checkpoint_info
from megatron.model.config_checks import (
    effective_sequence_parallel,
    original_vocab_size,
    tensor_parallel_size,
    validate_model_config,
)
from megatron.model.embedding import Embedding
from megatron.model.language_model_head import OutputLayer, per_token_loss, tied_head_logits
from megatron.model.norms import build_norm
from megatron.model.recompute import (
    checkpoint_replicated_inputs,
    checkpoint_sharded_inputs,
    validate_recompute_settings,
)
from megatron.model.transformer_engine import check_transformer_engine_request
from megatron.model.transformer_layer import TransformerLayer


DEFAULT_INIT_SEED = 1234  # Megatron's --seed default


class GPTModel(nn.Module):
    """Decoder-only transformer over the current tensor-parallel group.

    Args:
        config: a megatron.config.model.ModelConfig (or any object with its field names).
        sequence_parallel: Megatron sequence parallelism (ignored at TP = 1).
        recompute_granularity: None, "full" (recompute each layer) or "selective" (recompute the attention
            core); applied with deepspeed.checkpointing, which the caller has configured.
        partition_activations: the value given to deepspeed.checkpointing.configure; checked against the
            other settings (it needs "full" and no sequence parallelism).
        params_dtype: dtype of the parameters (fp32 master weights by default).
        pre_process / post_process: whether this model holds the embedding / the final norm and head (a
            pipeline stage holds a subset, as in Megatron).
        num_layers: layers this model holds (a pipeline stage's share); default config.num_layers. Output
            projections are still initialised for config.num_layers in total.
        layer_offset: global index of this model's first layer (a pipeline stage's), so that its layers get
            the initial values of those layers of the whole model.
        init_seed: the run's seed (--seed); with the parameter names it fixes every initial value.
        moe_config: a megatron.config.moe.MoEConfig; with --num-experts, every --moe-layer-freq-th layer's MLP
            is a Mixture-of-Experts layer.

    ``universal_checkpoint_info`` is a dict attribute, not a method: DeepSpeed 0.19's engine stores
    ``getattr(module, "universal_checkpoint_info")`` in every checkpoint it saves, and a bound method there
    makes ``save_checkpoint`` fail to pickle.
    """

    def __init__(self, config, *, sequence_parallel: bool = False, recompute_granularity: Optional[str] = None,
                 partition_activations: bool = False, params_dtype: torch.dtype = torch.float32,
                 pre_process: bool = True, post_process: bool = True, num_layers: Optional[int] = None,
                 layer_offset: int = 0, init_seed: int = DEFAULT_INIT_SEED, moe_config=None):
        super().__init__()
        validate_model_config(config)
        check_transformer_engine_request(config)
        self.sequence_parallel = effective_sequence_parallel(sequence_parallel)
        validate_recompute_settings(recompute_granularity, partition_activations, self.sequence_parallel)
        tp = tensor_parallel_size()
        if self.sequence_parallel and config.seq_length % tp != 0:
            raise ValueError(f"sequence parallelism splits the sequence over the {tp} tensor-parallel ranks, "
                             f"but seq_length {config.seq_length} is not divisible by {tp}; choose a "
                             f"--seq-length divisible by {tp} or drop --sequence-parallel")
        self.tied_output = not config.untie_embeddings_and_output_weights
        if post_process and self.tied_output and not pre_process:
            raise ValueError("a stage without the embedding (pre_process=False) cannot hold a head tied to it "
                             "(post_process=True with untie_embeddings_and_output_weights=False); build "
                             "pipelines with tied layers in the pipeline module, or set "
                             "--untie-embeddings-and-output-weights")
        self.config = config
        self.pre_process, self.post_process = pre_process, post_process
        self.recompute_granularity = recompute_granularity
        self.layer_offset = layer_offset
        self.moe_config = moe_config if moe_config is not None and moe_config.enabled else None
        self.vocab_size = original_vocab_size(config)
        with deferred_initialization():
            self._build(config, params_dtype, config.num_layers if num_layers is None else num_layers)
        initialize_parameters(self, init_seed, self.to_model_name)
        self.universal_checkpoint_info = build_universal_checkpoint_info(self, self.vocab_size)

    def _build(self, config, params_dtype, num_layers):
        if self.pre_process:
            self.embedding = Embedding(config, sequence_parallel=self.sequence_parallel, params_dtype=params_dtype)
        self.layers = nn.ModuleList(
            TransformerLayer(config, sequence_parallel=self.sequence_parallel,
                             recompute_core_attention=self.recompute_granularity == "selective",
                             params_dtype=params_dtype, moe=self.moe_config,
                             layer_number=self.layer_offset + index)
            for index in range(num_layers))
        if self.post_process:
            self.final_norm = build_norm(config, sequence_parallel=self.sequence_parallel, params_dtype=params_dtype)
            if not self.tied_output:
                self.output_layer = OutputLayer(config, sequence_parallel=self.sequence_parallel,
                                                params_dtype=params_dtype)

    def to_model_name(self, name: str) -> str:
        """This model's parameter name -> the whole model's (layers shift by ``layer_offset``)."""
        if self.layer_offset and name.startswith("layers."):
            index, rest = name[len("layers."):].split(".", 1)
            return f"layers.{int(index) + self.layer_offset}.{rest}"
        return name

    def forward(self, tokens: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None, *,
                hidden_states: Optional[torch.Tensor] = None, kv_caches=None) -> torch.Tensor:
        """tokens [b, s] (or, without pre_process, the previous stage's ``hidden_states`` [s(/tp), b, h]);
        position_ids [b, s] (default 0..s-1); attention_mask bool [b, 1, s, s], True = masked out (default
        causal); labels [b, s].

        ``kv_caches`` (inference): one megatron.inference.KVCache entry per layer of this model; tokens are then
        the ones after those cached, with their positions and a [b, 1, s, past + s] mask, and the logits are
        those of the last position only, [b, 1, V/tp].

        Returns the per-token loss [b, s] when labels are given, else vocab-sharded logits [b, s, V/tp]
        (padding ids at -inf);
        without post_process, the hidden states [s(/tp), b, h] for the next stage.
        """
        if self.pre_process:
            if tokens is None:
                raise ValueError("GPTModel with pre_process=True needs tokens [b, s]")
            hidden_states = self.embedding(tokens, position_ids)        # [s(/tp), b, h]
        elif hidden_states is None:
            raise ValueError("GPTModel with pre_process=False needs the previous stage's hidden_states "
                             "[s(/tp), b, h] (keyword argument)")

        if kv_caches is not None:
            if len(kv_caches) != len(self.layers):
                raise ValueError(f"kv_caches has {len(kv_caches)} entries for {len(self.layers)} layers")
            for layer, cache in zip(self.layers, kv_caches):
                hidden_states = layer(hidden_states, position_ids, attention_mask, kv_cache=cache)
            if self.post_process:
                # Generation reads the next-token logits only: the head runs on the last position alone.
                hidden_states = hidden_states[-1:]                      # [s, b, h] -> [1, b, h]
        elif self.recompute_granularity == "full":
            # A layer's input is TP-replicated, except under sequence parallelism (this rank's s/tp slice).
            checkpoint = checkpoint_sharded_inputs if self.sequence_parallel else checkpoint_replicated_inputs
            for layer in self.layers:
                hidden_states = checkpoint(layer, hidden_states, position_ids, attention_mask)
        else:
            for layer in self.layers:
                hidden_states = layer(hidden_states, position_ids, attention_mask)

        if not self.post_process:
            return hidden_states
        hidden_states = self.final_norm(hidden_states)
        if self.tied_output:
            logits = tied_head_logits(hidden_states, self.embedding.word_embeddings.weight,
                                      self.sequence_parallel, self.vocab_size)    # [s, b, V/tp]
        else:
            logits = self.output_layer(hidden_states)                          # [s, b, V/tp]
        if labels is None:
            return logits.transpose(0, 1).contiguous()                         # [s, b, V/tp] -> [b, s, V/tp]
        return per_token_loss(logits, labels)
