"""Batched autoregressive generation with a KV cache over the tensor-parallel model.

A batch of prompts of different lengths is left-padded to the longest, so every row's next token sits in the
same column. Each row's positions start at 0 at its first real token and padded keys are masked out, so a row
computes what it would alone (up to float reduction order). The prompt runs once (prefill) filling the cache;
then each step feeds only the newest token of every row. Pad queries of the prefill attend to themselves only
(a fully masked row would give NaN); nothing reads their outputs.

Every TP rank runs the same loop on the same tokens: logits are gathered over the vocabulary shards and cut to
the tokenizer's vocabulary (padding rows are never candidates), the next tokens are chosen, and TP rank 0's
choice is broadcast.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
from megatron.inference.kv_cache import allocate_kv_caches
from megatron.inference.sampling import SamplingParams, choose_next_tokens


@dataclass
class GeneratedIds:
    token_ids: List[List[int]]                 # per prompt: the generated ids (an EOD that stopped it included)
    finish_reasons: List[str]                  # "length", "eod" or "stop"
    step_logits: List[torch.Tensor] = field(default_factory=list)  # [b, V] per step, when asked for


def vocabulary_logits(model, logits: torch.Tensor) -> torch.Tensor:
    """This rank's vocab shard [b, V_padded/tp] -> the whole real vocabulary [b, V] in fp32."""
    if ps.get_tensor_model_parallel_world_size() > 1:
        logits = gather_from_tensor_model_parallel_region(logits.contiguous())
    return logits[..., :model.vocab_size].float()


def _agree_on_tokens(tokens: torch.Tensor) -> torch.Tensor:
    if ps.get_tensor_model_parallel_world_size() > 1:
        comm.broadcast(tokens, src=ps.get_tensor_model_parallel_src_rank(),
                       group=ps.get_tensor_model_parallel_group())
    return tokens


def context_length(model) -> int:
    return model.config.max_position_embeddings


def check_request(model, prompts_ids: Sequence[Sequence[int]], max_new_tokens: int):
    """ValueError naming the cause for what a user can get wrong (empty prompt, too long, negative count)."""
    if not prompts_ids:
        raise ValueError("no prompt given")
    if max_new_tokens < 0:
        raise ValueError(f"max new tokens must be >= 0, got {max_new_tokens}")
    limit = context_length(model)
    for index, ids in enumerate(prompts_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {index} is empty (no tokens); give at least one character of text")
        if len(ids) + max_new_tokens > limit:
            raise ValueError(f"prompt {index} has {len(ids)} tokens; with {max_new_tokens} new tokens that exceeds "
                             f"the model's context of {limit} positions (max_position_embeddings); shorten the "
                             f"prompt or ask for fewer tokens")


@torch.no_grad()
def generate_ids(model, prompts_ids: Sequence[Sequence[int]], max_new_tokens: int,
                 params: SamplingParams = SamplingParams(), *, eod: Optional[int] = None,
                 stop_check=None, keep_logits: bool = False, pad_id: int = 0, on_step=None) -> GeneratedIds:
    """Generate up to ``max_new_tokens`` after each prompt (token id lists) with the KV cache.

    ``eod``: stop a row when it emits this id. ``stop_check(row, generated_ids) -> bool``: stop a row (user
    stop strings). ``keep_logits``: return each step's [b, V] logits (tests compare them with recomputation).
    ``on_step(result)``: called after every step with the result so far (streaming).
    """
    check_request(model, prompts_ids, max_new_tokens)
    batch, longest = len(prompts_ids), max(len(ids) for ids in prompts_ids)
    lengths = torch.tensor([len(ids) for ids in prompts_ids])
    padding = longest - lengths                                              # [b]
    tokens = torch.full((batch, longest), pad_id, dtype=torch.long)
    for row, ids in enumerate(prompts_ids):
        tokens[row, padding[row]:] = torch.tensor(list(ids), dtype=torch.long)
    total = longest + max_new_tokens
    columns = torch.arange(total)
    key_valid = columns.unsqueeze(0) >= padding.unsqueeze(1)                 # [b, total]
    dtype = next(model.parameters()).dtype
    caches = allocate_kv_caches(model, batch, total, dtype)
    generator = None if params.greedy else torch.Generator().manual_seed(params.seed)
    result = GeneratedIds([[] for _ in range(batch)], ["length"] * batch)
    if max_new_tokens == 0:
        return result

    # Prefill: [b, L] tokens, positions restart at each row's first real token, mask [b, 1, L, L].
    positions = (columns[:longest].unsqueeze(0) - padding.unsqueeze(1)).clamp(min=0)
    causal = torch.ones(longest, longest, dtype=torch.bool).tril()
    allowed = causal.unsqueeze(0) & key_valid[:, None, :longest]             # [b, L, L]
    allowed |= torch.eye(longest, dtype=torch.bool).unsqueeze(0)             # pad queries see themselves
    logits = model(tokens, position_ids=positions, attention_mask=~allowed.unsqueeze(1), kv_caches=caches)
    done = torch.zeros(batch, dtype=torch.bool)
    for step in range(max_new_tokens):
        step_logits = vocabulary_logits(model, logits[:, -1])                # [b, V]
        if keep_logits:
            result.step_logits.append(step_logits)
        next_tokens = _agree_on_tokens(choose_next_tokens(step_logits, params, generator).contiguous())
        for row in range(batch):
            if done[row]:
                continue
            token = int(next_tokens[row])
            result.token_ids[row].append(token)
            if eod is not None and token == eod:
                done[row], result.finish_reasons[row] = True, "eod"
            elif stop_check is not None and stop_check(row, result.token_ids[row]):
                done[row], result.finish_reasons[row] = True, "stop"
        if on_step is not None:
            on_step(result)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        # Decode: one token per row at column L + step, seeing every valid key so far.
        column = longest + step
        positions = (lengths + step).unsqueeze(1)                            # [b, 1]
        # [b, 1, 1, L + step + 1]; without padding every key is valid and SDPA's unmasked path is faster.
        mask = ~key_valid[:, None, None, :column + 1] if bool(padding.any()) else None
        logits = model(next_tokens.unsqueeze(1), position_ids=positions, attention_mask=mask, kv_caches=caches)
    return result


@torch.no_grad()
def recomputed_logits(model, ids: Sequence[int]) -> torch.Tensor:
    """Next-token logits [V] after ``ids`` from a full forward without cache (the reference for the cache)."""
    tokens = torch.tensor([list(ids)], dtype=torch.long)
    return vocabulary_logits(model, model(tokens)[:, -1])[0]
