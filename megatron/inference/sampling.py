"""Choosing the next token from the logits: greedy, or sampling with temperature, top-k and top-p.

Logits arrive gathered over the TP ranks and cut to the tokenizer's vocabulary, so the padding rows of the
embedding are not even candidates. Every TP rank samples from the same logits with a generator seeded the
same way; the caller still broadcasts TP rank 0's choice so the ranks can never drift apart.
"""

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. ``greedy`` ignores the rest; otherwise softmax(logits / temperature)
    restricted to the ``top_k`` most likely tokens (0: all) and to the smallest set whose probability reaches
    ``top_p`` (1.0: all)."""
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 1234

    def __post_init__(self):
        if self.greedy:
            return
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}; use --greedy for argmax decoding")
        if self.top_k < 0:
            raise ValueError(f"top-k must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")


def _keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.size(-1):
        return logits
    threshold = torch.topk(logits, k, dim=-1).values[..., -1:]          # [b, 1]: the k-th largest
    return logits.masked_fill(logits < threshold, float("-inf"))


def _keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop a token when the tokens before it already reach p (the most likely one always stays).
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose_next_tokens(logits: torch.Tensor, params: SamplingParams,
                       generator: Optional[torch.Generator]) -> torch.Tensor:
    """logits [b, V] (fp32, real vocabulary only) -> token ids [b]."""
    if params.greedy:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    logits = _keep_top_p(_keep_top_k(logits, params.top_k), params.top_p)
    probabilities = logits.softmax(dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)
