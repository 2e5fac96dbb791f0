"""The pickled arguments of a Megatron run -> our ModelConfig fields; and how its fused QKV rows are ordered.

Megatron-DeepSpeed spells positions as an enum (PositionEmbeddingType.rotary / absolute) or
``use_rotary_position_embeddings``, normalization as 'layernorm' / 'rmsnorm', GQA as
``num_key_value_heads``; Megatron-LM as strings ('rope', 'learned_absolute'; 'LayerNorm', 'RMSNorm') and
``num_query_groups`` under ``group_query_attention``. Architectures this model does not implement are refused.
"""

from megatron.checkpointing.safe_load import CheckpointError, enum_member_name

# Fused query_key_value rows of one tensor rank:
#   "interleaved": per key/value group, its query heads then its key head then its value head (per head
#                  q, k, v for plain multi-head attention): Megatron-LM, and Megatron-DeepSpeed before the
#                  FPDT change of December 2024 (and every GQA checkpoint of it);
#   "blocked":     all the rank's query rows, then all key rows, then all value rows (Megatron-DeepSpeed
#                  after the FPDT change, whose arguments carry ds_sequence_parallel_fpdt*).
QKV_ORDERS = ("interleaved", "blocked")


def qkv_order(args: dict, kind: str) -> str:
    if kind == "megatron-lm":
        return "interleaved"
    heads = args["num_attention_heads"]
    groups = args.get("num_key_value_heads") or heads
    if groups != heads:
        return "interleaved"
    if any(name.startswith("ds_sequence_parallel_fpdt") for name in args):
        return "blocked"
    return "interleaved"


def _refuse(problem: str):
    raise CheckpointError(f"the Megatron checkpoint's model is not one megatron-ds implements: {problem}")


def _position_type(args: dict) -> str:
    kind = enum_member_name(args.get("position_embedding_type"))
    if args.get("use_rotary_position_embeddings") or kind in ("rotary", "rope"):
        if float(args.get("rotary_percent", 1.0) or 1.0) != 1.0:
            _refuse(f"rotary_percent={args['rotary_percent']} (RoPE on part of each head)")
        return "rope"
    if kind in (None, "absolute", "learned_absolute") and args.get("add_position_embedding", True):
        return "learned_absolute"
    _refuse(f"position embeddings {kind!r} (add_position_embedding={args.get('add_position_embedding')}); "
            f"megatron-ds has learned absolute positions and RoPE")


def _group_count(args: dict) -> int:
    heads = args["num_attention_heads"]
    if args.get("num_key_value_heads"):
        return args["num_key_value_heads"]
    if args.get("group_query_attention") and args.get("num_query_groups"):
        return args["num_query_groups"]
    return heads


def _checks(args: dict, swiglu: bool):
    experts = args.get("num_experts") or 1
    if max(experts if isinstance(experts, (list, tuple)) else [experts]) > 1:
        _refuse(f"num_experts={experts} (mixture of experts)")
    if args.get("apply_residual_connection_post_layernorm"):
        _refuse("apply_residual_connection_post_layernorm=True")
    if args.get("apply_layernorm_1p"):
        _refuse("apply_layernorm_1p=True (zero-centred LayerNorm weights)")
    if not swiglu and not (args.get("bias_gelu_fusion", True) or args.get("openai_gelu")) and \
            args.get("add_bias_linear", True):
        _refuse("exact (erf) GELU (--no-bias-gelu-fusion without --openai-gelu); megatron-ds uses the tanh GELU "
                "of Megatron's fused bias-GELU")
    if args.get("squared_relu") or args.get("onnx_safe"):
        _refuse("squared ReLU / onnx_safe activation")
    if args.get("add_qkv_bias") and not args.get("add_bias_linear", True):
        _refuse("add_qkv_bias without add_bias_linear (biases on QKV only)")
    if args.get("num_layers_per_virtual_pipeline_stage"):
        _refuse("a virtual (interleaved) pipeline")


def model_fields(args: dict) -> dict:
    """ModelConfig fields for the run the arguments describe."""
    swiglu = bool(args.get("swiglu", False))
    _checks(args, swiglu)
    heads = args["num_attention_heads"]
    normalization = str(args.get("normalization", "layernorm")).lower()
    if normalization not in ("layernorm", "rmsnorm"):
        _refuse(f"normalization={args.get('normalization')!r}")
    epsilon = args.get("layernorm_epsilon", args.get("norm_epsilon", 1e-5))
    seq = args["seq_length"]
    return dict(
        model_family="llama" if swiglu else "gpt", num_layers=args["num_layers"], hidden_size=args["hidden_size"],
        num_attention_heads=heads, num_key_value_heads=_group_count(args),
        kv_channels=args.get("kv_channels") or args["hidden_size"] // heads,
        ffn_hidden_size=args.get("ffn_hidden_size") or 4 * args["hidden_size"], seq_length=seq,
        max_position_embeddings=args.get("max_position_embeddings") or seq,
        position_embedding_type=_position_type(args),
        rotary_base=float(args.get("rope_theta", args.get("rotary_base", 10000.0)) or 10000.0),
        normalization="RMSNorm" if normalization == "rmsnorm" else "LayerNorm", norm_epsilon=float(epsilon),
        swiglu=swiglu, add_bias_linear=bool(args.get("add_bias_linear", True)),
        untie_embeddings_and_output_weights=bool(args.get("untie_embeddings_and_output_weights", False)),
        attention_dropout=float(args.get("attention_dropout", 0.1)),
        hidden_dropout=float(args.get("hidden_dropout", 0.1)))


def parallel_sizes(args: dict):
    return int(args.get("tensor_model_parallel_size", 1) or 1), int(args.get("pipeline_model_parallel_size", 1) or 1)


def checkpoint_config(load_dir: str) -> dict:
    """The model and tokenizer of a Megatron checkpoint, as RunConfig groups (for --use-checkpoint-args)."""
    from megatron.checkpointing.megatron_import.sources import open_megatron_checkpoint
    from megatron.config.legacy_flags import TOKENIZER_NAMES

    args = open_megatron_checkpoint(load_dir).args
    model = dict(model_fields(args), make_vocab_size_divisible_by=args.get("make_vocab_size_divisible_by"))
    data = {key: args.get(key) for key in ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file")}
    data["tokenizer_type"] = TOKENIZER_NAMES.get(data["tokenizer_type"], data["tokenizer_type"])
    return {"model": model, "data": data}
