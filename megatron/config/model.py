"""ModelConfig: the shape and the architectural choices of a GPT or Llama model."""

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional

from megatron.config.errors import ConfigError
from megatron.config.fields import option
from megatron.core.vocab_padding import pad_vocab_size

# What `--model-family` presets. Explicit flags override any of these.
FAMILY_PRESETS: Dict[str, Dict[str, Any]] = {
    "gpt": dict(position_embedding_type="learned_absolute", normalization="LayerNorm", swiglu=False,
                add_bias_linear=True, untie_embeddings_and_output_weights=False),
    # Llama also trains without dropout (Megatron-DeepSpeed's Llama scripts pass both dropouts as 0).
    "llama": dict(position_embedding_type="rope", normalization="RMSNorm", swiglu=True,
                  add_bias_linear=False, untie_embeddings_and_output_weights=True,
                  attention_dropout=0.0, hidden_dropout=0.0),
}
# Mixtral: Llama blocks whose MLPs are 8 SwiGLU experts, 2 per token, softmax over the chosen two.
FAMILY_PRESETS["mixtral"] = dict(FAMILY_PRESETS["llama"], num_experts=(8,), moe_router_topk=2,
                                 moe_router_pre_softmax=False)


def default_ffn_hidden_size(hidden_size: int, swiglu: bool) -> Optional[int]:
    """Megatron-LM's rule: 4*h; with SwiGLU, 2/3 of that (two input projections keep the parameter count
    close to 4*h), rounded DOWN to a multiple of 64. Llama's own code rounds up to a multiple of 256, so a
    Llama checkpoint needs an explicit --ffn-hidden-size. None when the rule gives 0 (hidden < 24)."""
    if not swiglu:
        return 4 * hidden_size
    size = (8 * hidden_size // 3) // 64 * 64
    return size or None


@dataclass(frozen=True)
class ModelConfig:
    """Model shape and architecture. Fields left unset are derived when the config is built."""

    model_family: str = option("gpt", "Preset of architectural choices: gpt (learned positions, LayerNorm, "
                               "GeLU, biases, tied embeddings), llama (RoPE, RMSNorm, SwiGLU, no biases, "
                               "untied) or mixtral (llama with 8 experts per layer, top-2 routing). Explicit flags override the preset.",
                               choices=tuple(FAMILY_PRESETS))
    num_layers: int = option(None, "Number of transformer layers.", minimum=1, required=True)
    hidden_size: int = option(None, "Transformer hidden size.", minimum=1, required=True)
    ffn_hidden_size: Optional[int] = option(
        None, "MLP hidden size.", minimum=1,
        derived="4*hidden_size; with --swiglu Megatron's int(8*hidden_size/3/64)*64")
    num_attention_heads: int = option(None, "Number of attention heads.", minimum=1, required=True)
    num_key_value_heads: Optional[int] = option(
        None, "Key/value heads for grouped-query attention. `--num-query-groups` (Megatron-LM's "
        "spelling) sets the same value; unlike Megatron-LM it applies without --group-query-attention.",
        aliases=("--num-query-groups",), minimum=1, derived="num_attention_heads (multi-head attention)")
    kv_channels: Optional[int] = option(None, "Per-head projection size.", minimum=1,
                                        derived="hidden_size / num_attention_heads")
    seq_length: int = option(None, "Sequence length of a training sample.", minimum=1, required=True)
    max_position_embeddings: Optional[int] = option(
        None, "Size of the position table (learned) or the longest position RoPE is built for.",
        minimum=1, derived="seq_length")
    position_embedding_type: str = option(
        "learned_absolute", "Position encoding.", choices=("learned_absolute", "rope"),
        const_aliases={"--use-rotary-position-embeddings": "rope"})
    rotary_base: float = option(10000.0, "RoPE theta.", minimum=1)
    normalization: str = option("LayerNorm", "Normalization layer (case-insensitive).",
                                choices=("LayerNorm", "RMSNorm"))
    norm_epsilon: float = option(1e-5, "Epsilon of the normalization layers.",
                                 aliases=("--layernorm-epsilon",))
    swiglu: bool = option(False, "SwiGLU MLP instead of GeLU.", const_aliases={"--no-swiglu": False})
    add_bias_linear: bool = option(True, "Biases in the linear layers.",
                                   const_aliases={"--disable-bias-linear": False})
    untie_embeddings_and_output_weights: bool = option(
        False, "Separate output-layer weights instead of reusing the input embedding.",
        const_aliases={"--tie-embeddings-and-output-weights": False})
    attention_dropout: float = option(0.1, "Dropout probability on attention weights.", minimum=0)
    hidden_dropout: float = option(0.1, "Dropout probability on the residual branches.", minimum=0)
    init_method_std: float = option(0.02, "Standard deviation of the normal weight initialisation.",
                                    minimum=0)
    vocab_size: Optional[int] = option(
        None, "Vocabulary size before padding. As a flag, only for --tokenizer-type NullTokenizer: its number "
        "of text ids (the tokenizer adds EOD). Once the tokenizer exists, RunConfig.with_vocab() stores the "
        "tokenizer's own count here.", minimum=1)
    make_vocab_size_divisible_by: int = option(128, "Pad the vocabulary to a multiple of this times "
                                               "the tensor-parallel size.", minimum=1)
    padded_vocab_size: Optional[int] = option(
        None, "Embedding rows after padding; unset until the tokenizer reports its vocabulary.", cli=False,
        derived="with_vocab(): vocabulary rounded up to make_vocab_size_divisible_by * tensor_model_parallel_size")
    use_transformer_engine: bool = option(False, "Use NVIDIA transformer-engine layers (GPU only).")

    def __post_init__(self):
        # Fill derived values; a value that cannot be derived stays None and validate() reports it.
        # dataclasses.replace() keeps derived values: pass them as None to derive them again.
        derived = {}
        if self.ffn_hidden_size is None and self.hidden_size is not None:
            derived["ffn_hidden_size"] = default_ffn_hidden_size(self.hidden_size, self.swiglu)
        if self.num_key_value_heads is None:
            derived["num_key_value_heads"] = self.num_attention_heads
        if self.kv_channels is None and self.hidden_size and self.num_attention_heads and \
                self.hidden_size % self.num_attention_heads == 0:
            derived["kv_channels"] = self.hidden_size // self.num_attention_heads
        if self.max_position_embeddings is None:
            derived["max_position_embeddings"] = self.seq_length
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen: the only sanctioned write, during init

    def with_vocab(self, orig_vocab_size: int, tensor_model_parallel_size: int = 1) -> "ModelConfig":
        """A copy holding the tokenizer's vocabulary size and the padded size derived from it."""
        if self.vocab_size is not None and self.vocab_size != orig_vocab_size:
            if self.padded_vocab_size is not None:
                raise ConfigError(f"this config already holds a tokenizer vocabulary of {self.vocab_size}; "
                                  f"with_vocab({orig_vocab_size}) would change the model's embedding")
            raise ConfigError(f"--vocab-size {self.vocab_size} contradicts the tokenizer's vocabulary of "
                              f"{orig_vocab_size}; drop --vocab-size (it is only for NullTokenizer)")
        padded = pad_vocab_size(orig_vocab_size, self.make_vocab_size_divisible_by, tensor_model_parallel_size)
        return dataclasses.replace(self, vocab_size=orig_vocab_size, padded_vocab_size=padded)
