"""Choosing tokens from logits: greedy, temperature, top-k, top-p, seed; stop strings in text generation."""

import pytest
import torch

from megatron.inference.sampling import SamplingParams, choose_next_tokens


def _logits():
    return torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))


def _draws(params, count=400):
    generator = torch.Generator().manual_seed(params.seed)
    return torch.stack([choose_next_tokens(_logits(), params, generator) for _ in range(count)])   # [n, b]


def test_greedy_takes_the_argmax():
    assert choose_next_tokens(_logits(), SamplingParams(), None).tolist() == [0, 3]


def test_top_k_and_top_p_restrict_the_candidates():
    top2 = _draws(SamplingParams(greedy=False, top_k=2))
    assert set(top2[:, 0].tolist()) == {0, 1} and set(top2[:, 1].tolist()) == {3, 2}
    # p = 0.7: tokens 0 (0.5) and 1 (0.3) are needed to reach it, token 2 is not.
    top_p = _draws(SamplingParams(greedy=False, top_p=0.7))
    assert set(top_p[:, 0].tolist()) == {0, 1} and set(top_p[:, 1].tolist()) == {3, 2}
    assert set(_draws(SamplingParams(greedy=False, top_k=1))[:, 0].tolist()) == {0}


def test_temperature_and_seed():
    plain = _draws(SamplingParams(greedy=False, seed=3))
    assert torch.equal(plain, _draws(SamplingParams(greedy=False, seed=3)))
    assert not torch.equal(plain, _draws(SamplingParams(greedy=False, seed=4)))
    frequency = (plain[:, 0] == 0).float().mean().item()
    assert 0.4 < frequency < 0.6, frequency                                   # p = 0.5
    cold = _draws(SamplingParams(greedy=False, temperature=0.2, seed=3))
    assert (cold[:, 0] == 0).float().mean().item() > 0.9                      # 0.5^5 / sum p^5 = 0.93


@pytest.mark.parametrize("bad, message", [(dict(temperature=0.0), "temperature must be > 0"),
                                          (dict(top_k=-1), "top-k must be >= 0"),
                                          (dict(top_p=1.5), "top-p must be in (0, 1]")])
def test_bad_sampling_parameters_are_refused(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        SamplingParams(greedy=False, **bad)
