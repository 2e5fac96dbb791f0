"""Per-rank tensors in Megatron names -> whole fp32 tensors in our GPTModel names.

Each source name is first read as (layer, part): the three layouts spell the same parts differently
(pipeline layer files have no prefix; Megatron-DeepSpeed's module is under language_model.encoder; Megatron-LM
core under decoder, with transformer-engine norms fused into the next linear). Tensor-parallel shards are then
joined by how each part is split: vocabulary and column-parallel rows on dim 0, row-parallel on dim 1, norms and
row-parallel biases replicated. Two parts need their rows reordered, rank by rank, before the join:
- fused QKV: "blocked" ranks ([all q | all k | all v]) become our per-group [q..., k, v] rows;
- SwiGLU fc1: each rank holds [its gate rows | its up rows]; ours interleave gate and up row by row.
"""

import re
from collections import defaultdict
from typing import Dict, List, Tuple

import torch

from megatron.checkpointing.safe_load import CheckpointError

# Source part name -> canonical part (per transformer layer)
LAYER_PARTS = {
    "input_layernorm": "input_norm", "self_attention.linear_qkv.layer_norm": "input_norm",
    "self_attention.query_key_value": "qkv", "self_attention.linear_qkv": "qkv",
    "self_attention.dense": "proj", "self_attention.linear_proj": "proj",
    "post_attention_layernorm": "post_norm", "pre_mlp_layernorm": "post_norm", "mlp.linear_fc1.layer_norm": "post_norm",
    "mlp.dense_h_to_4h": "fc1", "mlp.linear_fc1": "fc1", "mlp.dense_4h_to_h": "fc2", "mlp.linear_fc2": "fc2",
}
OUR_LAYER_NAMES = {"input_norm": "input_norm", "qkv": "self_attention.linear_qkv",
                   "proj": "self_attention.linear_proj", "post_norm": "post_attention_norm",
                   "fc1": "mlp.linear_fc1", "fc2": "mlp.linear_fc2"}
GLOBAL_PARTS = {  # source names (after any prefix) -> canonical
    "language_model.embedding.word_embeddings.weight": "word", "embedding.word_embeddings.weight": "word",
    "word_embeddings.weight": "word",
    "language_model.embedding.position_embeddings.weight": "position",
    "embedding.position_embeddings.weight": "position", "position_embeddings.weight": "position",
    "language_model.encoder.final_layernorm.weight": "final_norm.weight",
    "language_model.encoder.final_layernorm.bias": "final_norm.bias",
    "language_model.encoder.final_norm.weight": "final_norm.weight",
    "language_model.encoder.final_norm.bias": "final_norm.bias",
    "decoder.final_layernorm.weight": "final_norm.weight", "decoder.final_layernorm.bias": "final_norm.bias",
    "language_model.output_layer.weight": "output", "output_layer.weight": "output", "lm_head.weight": "output",
}
OUR_GLOBAL_NAMES = {"word": "embedding.word_embeddings.weight", "position": "embedding.position_embeddings.weight",
                    "final_norm.weight": "final_norm.weight", "final_norm.bias": "final_norm.bias",
                    "output": "output_layer.linear.weight"}
LAYER_NAME = re.compile(r"^(?:language_model\.encoder\.|decoder\.)?layers\.(\d+)\.(.+)\.(weight|bias)$")
IGNORED = re.compile(r"(_extra_state|inv_freq|rotary_pos_emb\..*|\.attention\.bias|masked_bias)$")
PIPE_FILE = re.compile(r"^layer_(\d+)\.(.+)$")


def canonical_names(state: Dict[str, torch.Tensor], layer_offset: int, source: str,
                    pipeline_files: bool) -> Dict[Tuple, torch.Tensor]:
    """{name: tensor} of one rank -> {(layer or None, canonical part, suffix): tensor}."""
    out = {}
    if pipeline_files:
        state = _pipeline_layers_numbered(state, source)
    for name, tensor in state.items():
        if IGNORED.search(name):
            continue
        if name in GLOBAL_PARTS:
            out[(None, GLOBAL_PARTS[name], None)] = tensor
            continue
        te_norm = re.match(r"^(.*)\.layer_norm_(weight|bias)$", name)
        found = LAYER_NAME.match(te_norm.group(1) + "." + te_norm.group(2) if te_norm else name)
        if not found:
            raise CheckpointError(f"{source}: tensor `{name}` is not one megatron-ds can place in its GPT model")
        layer, part, suffix = int(found.group(1)), found.group(2), found.group(3)
        if te_norm:
            part = part + ".layer_norm"
        canonical = LAYER_PARTS.get(part)
        if canonical is None:
            raise CheckpointError(f"{source}: tensor `{name}` has no counterpart in megatron-ds's transformer layer "
                                  f"(mixture-of-experts and other layer kinds are not importable)")
        out[(layer + layer_offset, canonical, suffix)] = tensor
    return out


def _pipeline_layers_numbered(state: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """Pipeline layer files (``layer_XX.<key>``): transformer layers are the files holding an attention block,
    numbered in file order; the norm file after them is the final norm; the embedding file is found by its keys.
    A tied output layer's copy (an EmbeddingPipe after the final norm) repeats the embedding and is skipped."""
    by_file: Dict[int, Dict[str, torch.Tensor]] = defaultdict(dict)
    for name, tensor in state.items():
        found = PIPE_FILE.match(name)
        by_file[int(found.group(1))][found.group(2)] = tensor
    named, layer, seen_layers, seen_embedding = {}, 0, False, False
    for index in sorted(by_file):
        keys = by_file[index]
        if any(key.startswith(("self_attention.", "input_layernorm.")) for key in keys):
            named.update({f"layers.{layer}.{key}": tensor for key, tensor in keys.items()})
            layer, seen_layers = layer + 1, True
        elif "word_embeddings.weight" in keys:
            if not seen_embedding:
                named.update(keys)
                seen_embedding = True
        elif set(keys) <= {"weight", "bias"} and seen_layers:
            named.update({f"language_model.encoder.final_layernorm.{key}": tensor for key, tensor in keys.items()})
        elif "lm_head.weight" in keys:
            named.update(keys)
        else:
            raise CheckpointError(f"{source}: pipeline layer file layer_{index:02d} holds {sorted(keys)}, which "
                                  f"megatron-ds cannot place")
    return named


def _qkv_to_interleaved(rows: torch.Tensor, heads: int, groups: int, head_size: int) -> torch.Tensor:
    """One rank's blocked [q (heads hn) | k (groups hn) | v (groups hn)] rows -> per group [q..., k, v]."""
    trailing = tuple(rows.shape[1:])
    per_group = heads // groups
    query, key, value = torch.split(rows, [heads * head_size, groups * head_size, groups * head_size])
    query = query.reshape(groups, per_group, head_size, *trailing)
    key = key.reshape(groups, 1, head_size, *trailing)
    value = value.reshape(groups, 1, head_size, *trailing)
    return torch.cat([query, key, value], dim=1).reshape(rows.shape)


def _join(part: str, suffix, shards: List[torch.Tensor], model, qkv_order: str) -> torch.Tensor:
    tp = len(shards)
    if part in ("position", "final_norm.weight", "final_norm.bias", "input_norm", "post_norm") or \
            (part in ("proj", "fc2") and suffix == "bias"):
        return shards[0]
    if part in ("word", "output"):
        return torch.cat(shards, dim=0)
    if part in ("proj", "fc2"):
        return torch.cat(shards, dim=1)
    if part == "qkv":
        if qkv_order == "blocked":
            shards = [_qkv_to_interleaved(shard, model.num_attention_heads // tp, model.num_key_value_heads // tp,
                                          model.kv_channels) for shard in shards]
        return torch.cat(shards, dim=0)
    if part == "fc1":
        if not model.swiglu:
            return torch.cat(shards, dim=0)
        gates, ups = zip(*(torch.chunk(shard, 2, dim=0) for shard in shards))
        gate, up = torch.cat(gates), torch.cat(ups)
        return torch.stack([gate, up], dim=1).reshape(2 * gate.shape[0], *gate.shape[1:])
    raise AssertionError(part)


def whole_weights(ranks: Dict[Tuple[int, int], Dict[Tuple, torch.Tensor]], model, qkv_order: str,
                  source: str, merged_tp: int = None) -> Dict[str, torch.Tensor]:
    """{(pp, tp): canonical tensors} -> {our name: whole fp32 tensor}. ``merged_tp``: the tensors are already
    whole (a universal checkpoint), merged from that many TP ranks; a whole SwiGLU fc1 is then [all gate | all
    up], i.e. one rank's layout, and blocked QKV rows are cut back into their ranks to be reordered."""
    tp_size = 1 + max(tp for _, tp in ranks)
    gathered: Dict[Tuple, Dict[int, torch.Tensor]] = defaultdict(dict)
    for (_, tp_rank), state in ranks.items():
        for key, tensor in state.items():
            gathered[key].setdefault(tp_rank, tensor)
    weights = {}
    for (layer, part, suffix), by_rank in gathered.items():
        if len(by_rank) != tp_size:
            raise CheckpointError(f"{source}: {part} of layer {layer} is on tensor ranks {sorted(by_rank)} only, "
                                  f"not all {tp_size}: the checkpoint is incomplete")
        shards = [by_rank[rank] for rank in range(tp_size)]
        if merged_tp and part == "qkv":
            shards = list(torch.chunk(shards[0], merged_tp, dim=0))
        tensor = _join(part, suffix, shards, model, qkv_order)
        if layer is None:
            name = OUR_GLOBAL_NAMES[part]
        else:
            name = f"layers.{layer}.{OUR_LAYER_NAMES[part]}.{suffix}"
        weights[name] = tensor.float().contiguous()
    return weights
