"""What the model reads from a ModelConfig beyond plain fields, and the checks a model config must pass.

The model takes any object with ModelConfig's field names (megatron.config.model.ModelConfig in practice).
Everything here raises ValueError naming the offending values and the fix, at construction time, before a
shape mismatch could surface deep inside a forward pass.
"""

from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import divide, pad_vocab_size

POSITION_EMBEDDING_TYPES = ("learned_absolute", "rope")
NORMALIZATIONS = ("LayerNorm", "RMSNorm")


def tensor_parallel_size() -> int:
    return ps.get_tensor_model_parallel_world_size()


def effective_sequence_parallel(sequence_parallel: bool) -> bool:
    """Sequence parallelism splits over the TP group; with TP = 1 there is nothing to split (Megatron also
    turns it off there)."""
    return bool(sequence_parallel) and tensor_parallel_size() > 1


def padded_vocab_size(config) -> int:
    """Rows of the embedding table: config.padded_vocab_size, else vocab_size padded for this TP size."""
    if config.padded_vocab_size is not None:
        return config.padded_vocab_size
    if config.vocab_size is None:
        raise ValueError("the model config has neither vocab_size nor padded_vocab_size; build it with "
                         "ModelConfig.with_vocab(tokenizer_vocab_size, tensor_model_parallel_size) or pass "
                         "--vocab-size")
    return pad_vocab_size(config.vocab_size, config.make_vocab_size_divisible_by, tensor_parallel_size())


def original_vocab_size(config) -> int:
    """The tokenizer's vocabulary (padding rows excluded); the padded size when the config lacks it."""
    return config.vocab_size if config.vocab_size is not None else padded_vocab_size(config)


def validate_model_config(config) -> None:
    """Every shape rule the model relies on, for the current tensor-parallel size."""
    tp = tensor_parallel_size()
    if config.position_embedding_type not in POSITION_EMBEDDING_TYPES:
        raise ValueError(f"position_embedding_type {config.position_embedding_type!r} is not one of "
                         f"{POSITION_EMBEDDING_TYPES}")
    if config.normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization {config.normalization!r} is not one of {NORMALIZATIONS}")
    if config.kv_channels is None:
        raise ValueError(f"hidden_size {config.hidden_size} is not divisible by num_attention_heads "
                         f"{config.num_attention_heads}, so the head size is undefined; pass --kv-channels")
    kv_heads = num_key_value_heads(config)
    if config.num_attention_heads % kv_heads != 0:
        raise ValueError(f"num_attention_heads {config.num_attention_heads} is not a multiple of "
                         f"num_key_value_heads {kv_heads}; grouped-query attention needs whole groups of "
                         f"query heads per key/value head")
    divide(config.num_attention_heads, tp, "number of attention heads (num_attention_heads)")
    # Each TP rank must own whole key/value groups (see attention.py for the fused QKV layout).
    divide(kv_heads, tp, "number of key/value heads (num_key_value_heads)")
    if config.ffn_hidden_size is None:
        raise ValueError(f"ffn_hidden_size is unset (ModelConfig leaves it unset when the SwiGLU default, 8/3 * "
                         f"hidden_size {config.hidden_size} rounded down to a multiple of 64, is 0); pass "
                         f"--ffn-hidden-size")
    divide(config.ffn_hidden_size, tp, "MLP hidden size (ffn_hidden_size)")
    vocab = padded_vocab_size(config)
    if vocab % tp != 0:
        raise ValueError(f"padded_vocab_size {vocab} is not divisible by the tensor-model-parallel size {tp}; "
                         f"recompute it with ModelConfig.with_vocab(vocab_size, {tp})")
    if config.max_position_embeddings < config.seq_length:
        raise ValueError(f"max_position_embeddings {config.max_position_embeddings} is shorter than seq_length "
                         f"{config.seq_length}; raise --max-position-embeddings to at least {config.seq_length}")


def num_key_value_heads(config) -> int:
    """Key/value heads; None in the config means multi-head attention (one per query head)."""
    return config.num_key_value_heads or config.num_attention_heads
