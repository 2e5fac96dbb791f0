"""A faithful writer of Megatron-DeepSpeed and Megatron-LM checkpoint files, for the import tests.

It starts from whole weights in our GPTModel names (taken from a Hugging Face model, whose logits
``transformers`` computes independently) and writes them the way those projects' savers lay them out:
- the pickled ``argparse.Namespace`` of arguments, with ``torch.dtype`` values and Megatron-DeepSpeed's
  ``megatron.model.enums.PositionEmbeddingType`` member (pickled under that module path, which is not ours:
  a throwaway module is registered under the name only while saving); numpy and python random states;
- Megatron-DeepSpeed pipeline: ``global_stepN/layer_XX-model_YY-model_states.pt`` with layer 0 the fp16 cast
  (no file), layer 1 the word+position embeddings, layers 2.. the transformer layers, then the final norm,
  then ``lm_head`` for untied models (the tied head reuses layer 1 and has no file of its own), plus
  ``mp_rank_XX_model_states.pt`` with the arguments and ``module: None``;
- Megatron-DeepSpeed ``--no-pipeline-parallel``: ``mp_rank_XX_model_states.pt`` with DeepSpeed's keys and
  the flat ``language_model.*`` state dict under ``module``;
- Megatron-LM ``--ckpt-format torch`` (transformer-engine layer spec: input norms fused into linear_qkv,
  pre-MLP norms into linear_fc1; ``_extra_state`` entries; layer numbers local to each pipeline stage):
  ``iter_NNNNNNN/mp_rank_TT[_PPP]/model_optim_rng.pt`` and latest_checkpointed_iteration.txt.
Tensor-parallel shards follow Megatron's splits: vocabulary and column-parallel rows, row-parallel columns;
fused QKV rows per rank either interleaved per group or blocked ([q | k | v], after Meg-DS's FPDT change);
SwiGLU's dense_h_to_4h per rank [gate | up].
"""

import argparse
import enum
import os
import random
import shutil
import sys
import types

import numpy
import torch

ITERATION = 10


def _position_enum_module():
    """A stand-in module importable as megatron.model.enums while pickling, like Meg-DS's own."""
    module = types.ModuleType("megatron.model.enums")

    class PositionEmbeddingType(enum.Enum):
        rotary = 1
        absolute = 2
        alibi = 3

    PositionEmbeddingType.__module__ = module.__name__
    PositionEmbeddingType.__qualname__ = "PositionEmbeddingType"
    module.PositionEmbeddingType = PositionEmbeddingType
    return module


def _save(obj, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path)


def _attention_backend_modules():
    """megatron.core.transformer(.enums) with Megatron-LM's AttnBackend, which its arguments pickle."""
    package = types.ModuleType("megatron.core.transformer")
    module = types.ModuleType("megatron.core.transformer.enums")

    class AttnBackend(enum.Enum):
        flash = 1
        fused = 2
        unfused = 3
        local = 4
        auto = 5

    AttnBackend.__module__, AttnBackend.__qualname__ = module.__name__, "AttnBackend"
    module.AttnBackend = AttnBackend
    package.enums = module
    return [package, module]


def save_with_megatron_enums(fn):
    """Run ``fn(enum_module)`` with megatron.model.enums and megatron.core.transformer.enums resolvable (so
    pickle writes those paths); ours has neither, and they are removed again afterwards."""
    module = _position_enum_module()
    registered = [module] + _attention_backend_modules()
    module.AttnBackend = registered[-1].AttnBackend
    previous = {entry.__name__: sys.modules.get(entry.__name__) for entry in registered}
    sys.modules.update({entry.__name__: entry for entry in registered})
    try:
        return fn(module)
    finally:
        for name, entry in previous.items():
            if entry is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = entry


def megds_args(model, *, tp, pp, padded_vocab, dtype, fpdt, enums, tokenizer=None):
    rope = model.position_embedding_type == "rope"
    args = argparse.Namespace(
        num_layers=model.num_layers, hidden_size=model.hidden_size, ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads, num_key_value_heads=model.num_key_value_heads,
        kv_channels=model.kv_channels, seq_length=model.seq_length,
        max_position_embeddings=model.max_position_embeddings,
        position_embedding_type=enums.PositionEmbeddingType.rotary if rope else enums.PositionEmbeddingType.absolute,
        use_rotary_position_embeddings=rope, add_position_embedding=not rope, rope_theta=model.rotary_base,
        normalization="rmsnorm" if model.normalization == "RMSNorm" else "layernorm",
        layernorm_epsilon=model.norm_epsilon, swiglu=model.swiglu, add_bias_linear=model.add_bias_linear,
        untie_embeddings_and_output_weights=model.untie_embeddings_and_output_weights,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, padded_vocab_size=padded_vocab,
        make_vocab_size_divisible_by=64, params_dtype=dtype, fp16=dtype == torch.float16,
        bf16=dtype == torch.bfloat16, bias_gelu_fusion=True, openai_gelu=False, num_experts=[1],
        hidden_dropout=0.0, attention_dropout=0.0, deepspeed=True, no_pipeline_parallel=pp == 1,
        apply_residual_connection_post_layernorm=False, iteration=ITERATION, rank=0, world_size=tp * pp,
        tokenizer_type=None, vocab_file="/data/gpt2-vocab.json", merge_file="/data/gpt2-merges.txt",
        tokenizer_model=None, consumed_train_samples=ITERATION * GLOBAL_BATCH, consumed_valid_samples=0,
        global_batch_size=GLOBAL_BATCH)
    if tokenizer:
        args.tokenizer_type, args.tokenizer_model = tokenizer
        args.vocab_file = args.merge_file = None
    if fpdt:  # arguments added by Meg-DS's FPDT commit (Dec 2024), present in every newer checkpoint
        args.ds_sequence_parallel_fpdt = False
        args.ds_sequence_parallel_fpdt_chunk_size = 65536
        args.ds_sequence_parallel_fpdt_offloading = False
    return args


def _rng_state():
    return [{"random_rng_state": random.getstate(), "np_rng_state": numpy.random.get_state(),
             "torch_rng_state": torch.get_rng_state(), "rng_tracker_states": {}}]


# --- our whole weights -> one tensor rank's Megatron tensors ---

def _split_rows(tensor, tp, rank):
    return torch.chunk(tensor, tp, dim=0)[rank]


def _qkv_rows(tensor, model, tp, rank, blocked):
    shard = _split_rows(tensor, tp, rank)  # our rows are per group [q..., k, v]; ranks hold whole groups
    if not blocked:
        return shard
    groups, head_size = model.num_key_value_heads // tp, model.kv_channels
    per_group = model.num_attention_heads // model.num_key_value_heads
    view = shard.reshape(groups, per_group + 2, head_size, *shard.shape[1:])
    query = view[:, :per_group].reshape(-1, *shard.shape[1:])
    return torch.cat([query, view[:, per_group].reshape(-1, *shard.shape[1:]),
                      view[:, per_group + 1].reshape(-1, *shard.shape[1:])])


def _fc1_rows(tensor, model, tp, rank):
    if not model.swiglu:
        return _split_rows(tensor, tp, rank)
    gate, up = tensor[0::2], tensor[1::2]
    return torch.cat([_split_rows(gate, tp, rank), _split_rows(up, tp, rank)])


def layer_tensors(weights, i, model, tp, rank, blocked, names):
    """{Megatron name: tensor} of layer i on tensor rank ``rank``; ``names`` picks Meg-DS or Megatron-LM spelling."""
    ours = f"layers.{i}."
    out = {}
    suffixes = ("weight", "bias") if model.add_bias_linear else ("weight",)
    norm_suffixes = ("weight", "bias") if model.normalization == "LayerNorm" else ("weight",)
    for suffix in norm_suffixes:
        out[names["input_norm"](suffix)] = weights[ours + f"input_norm.{suffix}"]
        out[names["post_norm"](suffix)] = weights[ours + f"post_attention_norm.{suffix}"]
    for suffix in suffixes:
        out[f"{names['qkv']}.{suffix}"] = _qkv_rows(weights[ours + f"self_attention.linear_qkv.{suffix}"], model, tp,
                                                    rank, blocked)
        out[f"{names['fc1']}.{suffix}"] = _fc1_rows(weights[ours + f"mlp.linear_fc1.{suffix}"], model, tp, rank)
        for part, our_part in (("proj", "self_attention.linear_proj"), ("fc2", "mlp.linear_fc2")):
            tensor = weights[ours + f"{our_part}.{suffix}"]
            out[f"{names[part]}.{suffix}"] = tensor if suffix == "bias" else torch.chunk(tensor, tp, dim=1)[rank]
    return out


MEGDS_NAMES = {"input_norm": lambda s: f"input_layernorm.{s}", "post_norm": lambda s: f"post_attention_layernorm.{s}",
               "qkv": "self_attention.query_key_value", "proj": "self_attention.dense", "fc1": "mlp.dense_h_to_4h",
               "fc2": "mlp.dense_4h_to_h"}
MEGATRON_LM_NAMES = {"input_norm": lambda s: f"self_attention.linear_qkv.layer_norm_{s}",
                     "post_norm": lambda s: f"mlp.linear_fc1.layer_norm_{s}", "qkv": "self_attention.linear_qkv",
                     "proj": "self_attention.linear_proj", "fc1": "mlp.linear_fc1", "fc2": "mlp.linear_fc2"}

MEGATRON_LM_LOCAL_NAMES = dict(MEGATRON_LM_NAMES, input_norm=lambda s: f"input_layernorm.{s}",
                               post_norm=lambda s: f"pre_mlp_layernorm.{s}")


def _padded_rows(tensor, rows):
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def _cast(tensors, dtype):
    return {name: tensor.to(dtype).clone() for name, tensor in tensors.items()}


GLOBAL_BATCH = 8


def _opt_param_scheduler():
    """Megatron's OptimizerParamScheduler.state_dict(), which it counts in samples (DeepSpeed saves it as
    ``lr_scheduler``: Meg-DS hands it to deepspeed.initialize)."""
    return {"max_lr": 3e-4, "lr_warmup_steps": 2 * GLOBAL_BATCH, "num_steps": ITERATION * GLOBAL_BATCH,
            "lr_decay_style": "cosine", "lr_decay_steps": 100 * GLOBAL_BATCH, "min_lr": 3e-5, "start_wd": 0.1,
            "end_wd": 0.1, "wd_incr_style": "constant", "wd_incr_steps": 100 * GLOBAL_BATCH}


def _deepspeed_keys(module, args, tp, pp, dtype):
    return {"module": module, "buffer_names": [], "optimizer": None, "param_shapes": None, "frozen_param_shapes": None,
            "shared_params": {}, "frozen_param_fragments": None, "lr_scheduler": _opt_param_scheduler(),
            "data_sampler": None, "random_ltd": None, "sparse_tensor_module_names": set(), "skipped_steps": 0,
            "global_steps": ITERATION, "global_samples": ITERATION * GLOBAL_BATCH, "dp_world_size": 1,
            "mp_world_size": tp,
            "ds_config": {"train_batch_size": 8, "bf16": {"enabled": dtype == torch.bfloat16}},
            "ds_version": "0.14.0", "args": args, "checkpoint_version": 3.0, "iteration": ITERATION,
            "tokens": ITERATION * GLOBAL_BATCH * 16, "rng_state": _rng_state()}


def write_megds(weights, model, folder, *, tp, pp, padded_vocab, dtype=torch.float32, blocked=False, fpdt=None,
                pipeline=True, tokenizer=None):
    """A Megatron-DeepSpeed run's checkpoint folder (``latest`` + ``global_step10``)."""
    fpdt = blocked if fpdt is None else fpdt
    tag = os.path.join(folder, f"global_step{ITERATION}")
    word = _padded_rows(weights["embedding.word_embeddings.weight"], padded_vocab)
    per_stage = model.num_layers // pp

    def write(enums):
        args = megds_args(model, tp=tp, pp=pp, padded_vocab=padded_vocab, dtype=dtype, fpdt=fpdt, enums=enums,
                          tokenizer=tokenizer)
        for rank in range(tp):
            embedding = {"word_embeddings.weight": _split_rows(word, tp, rank)}
            if model.position_embedding_type != "rope":
                embedding["position_embeddings.weight"] = weights["embedding.position_embeddings.weight"]
            final = {key: weights[f"final_norm.{key}"] for key in ("weight", "bias") if f"final_norm.{key}" in weights}
            output = {}
            if model.untie_embeddings_and_output_weights:
                output["weight"] = _split_rows(_padded_rows(weights["output_layer.linear.weight"], padded_vocab), tp,
                                               rank)
            layers = [layer_tensors(weights, i, model, tp, rank, blocked, MEGDS_NAMES) for i in range(model.num_layers)]
            if pipeline:
                _save(_cast(embedding, dtype), os.path.join(tag, f"layer_01-model_{rank:02d}-model_states.pt"))
                for i, layer in enumerate(layers):
                    _save(_cast(layer, dtype), os.path.join(tag, f"layer_{i + 2:02d}-model_{rank:02d}-model_states.pt"))
                last = model.num_layers + 2
                _save(_cast(final, dtype), os.path.join(tag, f"layer_{last:02d}-model_{rank:02d}-model_states.pt"))
                if output:
                    _save(_cast({"lm_head.weight": output["weight"]}, dtype),
                          os.path.join(tag, f"layer_{last + 1:02d}-model_{rank:02d}-model_states.pt"))
                for stage in range(pp):
                    _save(_deepspeed_keys(None, args, tp, pp, dtype),
                          os.path.join(tag, f"mp_rank_{stage * tp + rank:02d}_model_states.pt"))
            else:
                module = {f"language_model.embedding.{key}": value for key, value in embedding.items()}
                for i, layer in enumerate(layers):
                    module.update({f"language_model.encoder.layers.{i}.{key}": value for key, value in layer.items()})
                module.update({f"language_model.encoder.final_layernorm.{key}": value for key, value in final.items()})
                if output:
                    module["language_model.output_layer.weight"] = output["weight"]
                _save(_deepspeed_keys(_cast(module, dtype), args, tp, pp, dtype),
                      os.path.join(tag, f"mp_rank_{rank:02d}_model_states.pt"))
        assert per_stage * pp == model.num_layers

    save_with_megatron_enums(write)
    with open(os.path.join(folder, "latest"), "w") as handle:
        handle.write(f"global_step{ITERATION}")
    with open(os.path.join(folder, "latest_checkpointed_iteration.txt"), "w") as handle:
        handle.write(str(ITERATION))
    return folder


def megatron_lm_args(model, *, tp, pp, padded_vocab, dtype, enums):
    return argparse.Namespace(
        attention_backend=enums.AttnBackend.auto,
        num_layers=model.num_layers, hidden_size=model.hidden_size, ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads, group_query_attention=True,
        num_query_groups=model.num_key_value_heads, kv_channels=model.kv_channels, seq_length=model.seq_length,
        max_position_embeddings=model.max_position_embeddings, position_embedding_type="rope", rotary_percent=1.0,
        rotary_base=int(model.rotary_base), normalization="RMSNorm", norm_epsilon=model.norm_epsilon, swiglu=True,
        add_bias_linear=model.add_bias_linear, untie_embeddings_and_output_weights=True,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, padded_vocab_size=padded_vocab,
        make_vocab_size_divisible_by=64, params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=False,
        transformer_impl="transformer_engine", hidden_dropout=0.0, attention_dropout=0.0, ckpt_format="torch",
        tokenizer_type="Llama2Tokenizer", tokenizer_model="/data/llama/tokenizer.model", iteration=ITERATION)


def write_megatron_lm(weights, model, folder, *, tp, pp, padded_vocab, dtype=torch.float32, spec="transformer_engine"):
    """A Megatron-LM (mcore GPTModel; transformer-engine or local layer spec) --ckpt-format torch folder."""
    names = MEGATRON_LM_NAMES if spec == "transformer_engine" else MEGATRON_LM_LOCAL_NAMES
    per_stage = model.num_layers // pp
    word = _padded_rows(weights["embedding.word_embeddings.weight"], padded_vocab)
    output = _padded_rows(weights["output_layer.linear.weight"], padded_vocab)

    def write(enums):
        args = megatron_lm_args(model, tp=tp, pp=pp, padded_vocab=padded_vocab, dtype=dtype, enums=enums)
        args.transformer_impl = spec
        for stage in range(pp):
            for rank in range(tp):
                state = {}
                if stage == 0:
                    state["embedding.word_embeddings.weight"] = _split_rows(word, tp, rank)
                for local in range(per_stage):
                    layer = layer_tensors(weights, stage * per_stage + local, model, tp, rank, False, names)
                    state.update({f"decoder.layers.{local}.{key}": value for key, value in layer.items()})
                    for part in ("self_attention.core_attention", "self_attention.linear_qkv", "mlp.linear_fc1"):
                        state[f"decoder.layers.{local}.{part}._extra_state"] = torch.empty(0, dtype=torch.uint8)
                if stage == pp - 1:
                    state["decoder.final_layernorm.weight"] = weights["final_norm.weight"]
                    state["output_layer.weight"] = _split_rows(output, tp, rank)
                name = f"mp_rank_{rank:02d}" + (f"_{stage:03d}" if pp > 1 else "")
                _save({"args": args, "checkpoint_version": 3.0, "iteration": ITERATION,
                       "model": _cast(state, dtype), "rng_state": _rng_state(),
                       "num_floating_point_operations_so_far": 0},
                      os.path.join(folder, f"iter_{ITERATION:07d}", name, "model_optim_rng.pt"))

    save_with_megatron_enums(write)
    with open(os.path.join(folder, "latest_checkpointed_iteration.txt"), "w") as handle:
        handle.write(str(ITERATION))
    return folder


# --- what DeepSpeed's ds_to_universal makes of a Megatron-DeepSpeed checkpoint (its merge rules, applied by
# Megatron-DeepSpeed's universal_checkpoint_info patterns) ---

def _universal_rule(key):
    if key.endswith(("word_embeddings.weight", "lm_head.weight", "output_layer.weight")):
        return "vocab"
    if key.endswith(("layernorm.weight", "layernorm.bias", "position_embeddings.weight", "dense.bias",
                     "dense_4h_to_h.bias")) or key in ("weight", "bias"):
        return "replicated"
    if key.endswith(("dense.weight", "dense_4h_to_h.weight")):
        return "row"
    if "dense_h_to_4h" in key:
        return "two_sub_params"
    return "column"


def _universal_merge(key, slices, vocab, swiglu):
    rule = _universal_rule(key)
    if rule == "replicated":
        return slices[0], None
    if rule == "row":
        return torch.cat(slices, dim=1), 1
    if rule == "two_sub_params" and swiglu:
        halves = [torch.chunk(piece, 2, dim=0) for piece in slices]
        return torch.cat([torch.cat([half[0] for half in halves]), torch.cat([half[1] for half in halves])]), 0
    merged = torch.cat(slices, dim=0)
    return (merged[:vocab] if rule == "vocab" else merged), 0


def _slices_by_name(tag, model, tp, pipeline):
    """{module parameter name (as ds_to_universal names it): [TP slices]} of a written Meg-DS folder."""
    from megatron.checkpointing.safe_load import safe_megatron_load

    per_name = {}
    for rank in range(tp):
        if pipeline:
            for index in range(1, model.num_layers + 4):
                path = os.path.join(tag, f"layer_{index:02d}-model_{rank:02d}-model_states.pt")
                if not os.path.isfile(path):
                    continue
                for key, tensor in safe_megatron_load(path).items():
                    tied = index == 1 and not model.untie_embeddings_and_output_weights
                    name = f"tied_modules.embed.{key}" if tied else f"{index}.{key}"
                    per_name.setdefault(name, []).append(tensor)
        else:
            module = safe_megatron_load(os.path.join(tag, f"mp_rank_{rank:02d}_model_states.pt"))["module"]
            for key, tensor in module.items():
                per_name.setdefault(key, []).append(tensor)
    return per_name


def _write_universal_state(per_name, target, state_key, vocab, swiglu):
    for name, slices in per_name.items():
        key = name.split(".", 1)[1] if name[0].isdigit() else name
        param, cat_dim = _universal_merge(key, slices, vocab, swiglu)
        record = {"param": param.float()}
        if cat_dim is not None:
            record["cat_dim"] = cat_dim
        if _universal_rule(key) == "vocab":
            record["vocab_tensor"] = True
        _save(record, os.path.join(target, "zero", name, f"{state_key}.pt"))


def write_megds_universal(weights, model, folder, *, tp, pp, padded_vocab, vocab, pipeline, moments=None,
                          adam_step=ITERATION, **options):
    """A Meg-DS checkpoint (write_megds) and its ds_to_universal output ``global_step10_universal``, named in
    ``latest_universal``. ``moments`` ({'exp_avg': whole tensors in our names, 'exp_avg_sq': ...}): the Adam
    state the ZeRO shards held, laid out per TP rank like the weights (the fp32 optimizer partitions mirror
    the module's TP slices) and merged by the same rules into ``exp_avg.pt`` / ``exp_avg_sq.pt``, with Adam's
    step in ``step.pt`` next to them, as ds_to_universal writes them."""
    write_megds(weights, model, folder, tp=tp, pp=pp, padded_vocab=padded_vocab, pipeline=pipeline, **options)
    tag = os.path.join(folder, f"global_step{ITERATION}")
    target = tag + "_universal"
    per_name = _slices_by_name(tag, model, tp, pipeline)
    _write_universal_state(per_name, target, "fp32", vocab, model.swiglu)
    for state_key, whole in (moments or {}).items():
        scratch = os.path.join(folder, f"scratch_{state_key}")
        fp32_options = dict(options, dtype=torch.float32)
        write_megds(whole, model, scratch, tp=tp, pp=pp, padded_vocab=padded_vocab, pipeline=pipeline,
                    **fp32_options)
        _write_universal_state(_slices_by_name(os.path.join(scratch, f"global_step{ITERATION}"), model, tp,
                                               pipeline), target, state_key, vocab, model.swiglu)
        shutil.rmtree(scratch)
    if moments:
        for name in per_name:
            _save(torch.tensor(float(adam_step)), os.path.join(target, "zero", name, "step.pt"))
    for name in os.listdir(tag):
        if name.startswith("mp_rank_"):
            shutil.copy2(os.path.join(tag, name), target)
    with open(os.path.join(folder, "latest_universal"), "w") as handle:
        handle.write(os.path.basename(target))
    return target
