"""Using a trained model: generation with a KV cache from a checkpoint of any layout.

    loaded = load_model_for_inference(load_dir)                  # at TP = world size, PP = 1
    completions = generate_text(loaded.model, loaded.tokenizer, ["Once upon"], 20, SamplingParams())
"""

from megatron.inference.generate import GeneratedIds, check_request, generate_ids, recomputed_logits
from megatron.inference.kv_cache import KVCache, allocate_kv_caches
from megatron.inference.load_model import LoadedModel, checkpoint_tokenizer, load_model_for_inference
from megatron.inference.sampling import SamplingParams, choose_next_tokens
from megatron.inference.text import Completion, generate_text

__all__ = ["Completion", "GeneratedIds", "KVCache", "LoadedModel", "SamplingParams", "allocate_kv_caches",
           "check_request", "checkpoint_tokenizer", "choose_next_tokens", "generate_ids", "generate_text",
           "load_model_for_inference", "recomputed_logits"]
