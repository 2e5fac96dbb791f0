"""Prompts in, text out: tokenising with the checkpoint's tokenizer, stop strings, and the per-prompt result."""

from dataclasses import dataclass
from typing import List, Optional, Sequence

from megatron.inference.generate import generate_ids
from megatron.inference.sampling import SamplingParams


@dataclass
class Completion:
    prompt: str
    text: str                 # the generated text (an EOD or a stop string, and what follows it, left out)
    token_ids: List[int]      # the generated ids only (an EOD that stopped generation included)
    finish_reason: str        # "length", "eod" or "stop"

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "text": self.text, "token_ids": self.token_ids,
                "finish_reason": self.finish_reason}


def _cut_at_stop(text: str, stop: Sequence[str]) -> Optional[int]:
    found = [text.find(s) for s in stop if s and s in text]
    return min(found) if found else None


def generate_text(model, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                  params: SamplingParams = SamplingParams(), *, stop: Sequence[str] = (),
                  stop_at_eod: bool = True, on_update=None) -> List[Completion]:
    """One Completion per prompt. Every rank of the TP group must call it with the same arguments.

    ``on_update(completions)``: called after every generated token with the completions so far (streaming).
    """
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or prompt == "":
            raise ValueError(f"prompt {index} is empty; give at least one character of text")
    prompts_ids = [tokenizer.tokenize(prompt) for prompt in prompts]
    eod = tokenizer.eod if stop_at_eod else None

    def stop_check(row, ids):
        if not stop:
            return False
        return _cut_at_stop(continuation(row, [i for i in ids if i != tokenizer.eod]), stop) is not None

    prompt_texts = [tokenizer.detokenize(ids) for ids in prompts_ids]

    def continuation(row, text_ids):
        # Decoded after its prompt: SentencePiece drops the space of a first piece ("▁word") when decoding
        # it alone, which would glue the continuation to the prompt.
        whole = tokenizer.detokenize(list(prompts_ids[row]) + list(text_ids))
        if whole.startswith(prompt_texts[row]):
            return whole[len(prompt_texts[row]):]
        return tokenizer.detokenize(text_ids)

    def completions_of(generated):
        completions = []
        for row, (prompt, ids, reason) in enumerate(zip(prompts, generated.token_ids, generated.finish_reasons)):
            text_ids = ids[:-1] if reason == "eod" else ids
            text = continuation(row, text_ids) if text_ids else ""
            cut = _cut_at_stop(text, stop) if stop else None
            completions.append(Completion(prompt, text if cut is None else text[:cut], list(ids), reason))
        return completions

    on_step = (lambda generated: on_update(completions_of(generated))) if on_update is not None else None
    generated = generate_ids(model, prompts_ids, max_new_tokens, params, eod=eod, stop_check=stop_check,
                             pad_id=tokenizer.pad, on_step=on_step)
    return completions_of(generated)
