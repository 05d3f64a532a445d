"""Sampling on bare logits: the run's settings -> SamplingParams, and the filters' edges and per-row behaviour
(a batch of rows is what translation and image drawing sample from)."""

from __future__ import annotations

import pytest
import torch

from aigc.config import GenerateConfig
from aigc.errors import GenerationError
from aigc.generate.sampling import SamplingParams, apply_penalties, choose, filter_logits, sampling_params

NEG = float("-inf")
ROWS = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # a peaked row and a flat one


def test_sampling_params_takes_the_settings_and_the_request_overrides() -> None:
    """Every sampling setting of ``generate`` reaches the params (``stop`` as a tuple); what the request sets
    (seed, max_new_tokens, stop, ...) wins over the settings."""
    settings = GenerateConfig(max_new_tokens=20, temperature=0.5, top_k=3, top_p=0.9, min_p=0.1,
                              repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.3, stop=["\n\n"])
    expected = SamplingParams(max_new_tokens=20, temperature=0.5, top_k=3, top_p=0.9, min_p=0.1,
                              repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.3, stop=("\n\n",))
    assert sampling_params(settings) == expected
    overridden = sampling_params(settings, seed=4, max_new_tokens=7, stop=("END",), logprobs=True)
    assert overridden == SamplingParams(max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.9, min_p=0.1,
                                        repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.3,
                                        stop=("END",), seed=4, logprobs=True)


def test_default_params_filter_nothing() -> None:
    """top_p 1.0, min_p 0 and no top_k keep every token, even one whose probability rounds to 0 in float32."""
    logits = torch.tensor([[0.0, -30.0, -200.0]])
    assert torch.equal(filter_logits(logits, SamplingParams()), logits)


def test_top_p_works_per_row_and_keeps_the_token_that_crosses_it() -> None:
    """Each row gets its own nucleus: with top_p 0.9 the peaked row (probabilities .64 .24 .09 .03) keeps three
    tokens, the flat one all four; a token is dropped once the tokens before it already hold top_p (flat row,
    top_p 0.5: exactly two kept)."""
    nucleus = filter_logits(ROWS, SamplingParams(top_p=0.9))
    assert nucleus.tolist() == [[3.0, 2.0, 1.0, NEG], [0.0, 0.0, 0.0, 0.0]]
    half = filter_logits(ROWS[1:], SamplingParams(top_p=0.5))
    assert sorted(half[0].tolist()) == [NEG, NEG, 0.0, 0.0]


def test_min_p_threshold_is_per_row() -> None:
    """min_p compares each token with its own row's most likely one: 0.3 * .64 = .19 drops the peaked row's last two,
    and nothing of the flat row."""
    filtered = filter_logits(ROWS, SamplingParams(min_p=0.3))
    assert filtered.tolist() == [[3.0, 2.0, NEG, NEG], [0.0, 0.0, 0.0, 0.0]]


def test_greedy_takes_each_rows_most_likely_token() -> None:
    """At temperature 0 every row of a batch gets its own argmax (no generator needed)."""
    logits = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 1.0]])
    assert choose(logits, SamplingParams(temperature=0), []).tolist() == [1, 0]


def test_a_low_temperature_sharpens_the_distribution() -> None:
    """Temperature divides the logits: at 0.05 a token one logit behind is e^-20 as likely, so twenty seeded draws
    all take the better one (at temperature 1 they split about 27 / 73)."""
    logits = torch.tensor([[0.0, 1.0]]).repeat(20, 1)
    generators = [torch.Generator().manual_seed(i) for i in range(20)]
    assert choose(logits, SamplingParams(temperature=0.05), generators).tolist() == [1] * 20


def test_seed_range_and_empty_stop_strings() -> None:
    """A seed is accepted from 0 to 2**63 - 1 and refused outside; an empty stop string is refused (it would
    stop every generation at once)."""
    assert [SamplingParams(seed=s).seed for s in (0, 2**63 - 1)] == [0, 2**63 - 1]
    for seed in (-1, 2**63):
        with pytest.raises(GenerationError, match=rf"^seed must be in \[0, 2\*\*63\) \(got {seed}\)$"):
            SamplingParams(seed=seed)
    with pytest.raises(GenerationError, match="^stop strings must not be empty$"):
        SamplingParams(stop=("\n", ""))


def test_penalties_on_negative_logits_and_per_occurrence() -> None:
    """Repetition 2 halves a seen positive logit and doubles a seen negative one (both less likely); presence 0.5
    is subtracted once per generated token, frequency 0.25 once per occurrence; unseen tokens keep their logit."""
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.0]])
    seen = torch.tensor([[3.0, 1.0, 1.0, 0.0]])  # prompt + output
    generated = torch.tensor([[2.0, 0.0, 1.0, 0.0]])
    params = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    assert apply_penalties(logits, seen, generated, params).tolist() == [[0.0, -4.0, -0.25, 0.0]]
