"""The sampler's picks against hand-built logits: greedy, seeds, top-k/p, min-p, penalties, EOS rules, logprobs."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.llm.params import SamplingParams
from ferry.llm.sampling import Sampler, check
from tests.budget import examples

EOS = 3
GREEDY = SamplingParams(temperature=0.0)


def logits_of(*values: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def probs_logits(*probs: float) -> torch.Tensor:
    """Logits whose softmax is ``probs``."""
    return torch.tensor([math.log(p) for p in probs])


def pick(params: SamplingParams, logits: torch.Tensor, output: list[int] = (), prompt: list[int] = ()) -> int:
    return Sampler(params, list(prompt), [EOS]).pick(logits, list(output)).token_id


def draws(params: SamplingParams, logits: torch.Tensor, n: int) -> list[int]:
    """``n`` picks from one sampler (the output is kept empty, so nothing but the generator changes)."""
    sampler = Sampler(params, [], [EOS])
    return [sampler.pick(logits, []).token_id for _ in range(n)]


row = st.lists(st.floats(-30, 30, width=32), min_size=2, max_size=64).map(torch.tensor)


@settings(max_examples=examples(60), deadline=None)
@given(logits=row, dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_greedy_is_argmax(logits: torch.Tensor, dtype: torch.dtype) -> None:
    logits = logits.to(dtype)
    assert pick(GREEDY, logits) == int(torch.argmax(logits))


@settings(max_examples=examples(60), deadline=None)
@given(logits=row, seed=st.integers(0, 2**32))
def test_top_k_one_and_tiny_top_p_are_greedy(logits: torch.Tensor, seed: int) -> None:
    logits = logits + torch.arange(logits.shape[0]) * 1e-3  # no ties, so the most likely token is one token
    greedy = int(torch.argmax(logits))
    assert pick(SamplingParams(top_k=1, seed=seed), logits) == greedy
    assert pick(SamplingParams(top_p=1e-6, seed=seed), logits) == greedy


def test_greedy_ties_pick_the_lowest_id() -> None:
    assert pick(GREEDY, logits_of(1.0, 5.0, 5.0, 5.0)) == 1


def test_same_seed_same_tokens_different_seeds_differ() -> None:
    flat = torch.zeros(100)
    params = SamplingParams(seed=1234)
    assert draws(params, flat, 50) == draws(params, flat, 50)
    assert draws(params, flat, 50) != draws(replace(params, seed=4321), flat, 50)
    assert draws(SamplingParams(), flat, 50) != draws(SamplingParams(), flat, 50)  # a fresh seed each


def test_top_k_keeps_the_k_most_likely() -> None:
    logits = probs_logits(0.05, 0.3, 0.1, 0.25, 0.2, 0.1)
    assert set(draws(SamplingParams(top_k=3, seed=0), logits, 300)) == {1, 3, 4}


@pytest.mark.parametrize(("top_p", "kept"), [(0.75, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p: float, kept: set[int]) -> None:
    logits = probs_logits(0.5, 0.3, 0.15, 0.05)
    assert set(draws(SamplingParams(top_p=top_p, seed=0), logits, 400)) == kept


def test_top_p_applies_to_what_top_k_kept() -> None:
    # top_k=2 leaves 0.5/0.8 and 0.3/0.8: 0.625 alone does not reach top_p=0.7, so both stay
    logits = probs_logits(0.5, 0.3, 0.15, 0.05)
    assert set(draws(SamplingParams(top_k=2, top_p=0.7, seed=0), logits, 300)) == {0, 1}
    assert set(draws(SamplingParams(top_k=2, top_p=0.6, seed=0), logits, 300)) == {0}


def test_min_p_keeps_only_tokens_near_the_max() -> None:
    logits = probs_logits(0.15, 0.5, 0.3, 0.05)  # 0.5 * max = 0.25
    assert set(draws(SamplingParams(min_p=0.5, seed=0), logits, 300)) == {1, 2}
    assert set(draws(SamplingParams(min_p=1.0, seed=0), logits, 50)) == {1}


@pytest.mark.parametrize(("temperature", "expected"), [(1.0, 0.75), (0.5, 0.9), (2.0, 3**0.5 / (1 + 3**0.5))])
def test_temperature_reshapes_the_distribution(temperature: float, expected: float) -> None:
    logits = logits_of(0.0, math.log(3.0))  # p(1) = 0.75 at temperature 1
    picks = draws(SamplingParams(temperature=temperature, seed=0), logits, 3000)
    assert abs(Counter(picks)[1] / len(picks) - expected) < 0.04


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    logits = logits_of(2.0, 1.5, -1.0, -9.0)
    assert pick(params, logits, prompt=[0]) == 1  # 2.0 / 2 < 1.5
    assert pick(params, logits, output=[0]) == 1  # output tokens count too
    assert pick(GREEDY, logits, prompt=[0]) == 0
    negative = logits_of(-1.0, -1.5, -9.0, -9.0)
    assert pick(params, negative, prompt=[0]) == 1  # -1.0 * 2 < -1.5


def test_repetition_penalty_does_not_compound_with_repeats() -> None:
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    assert pick(params, logits_of(2.0, 0.9, -9.0, -9.0), output=[0, 0, 0, 0]) == 0  # 1.0 > 0.9


def test_frequency_penalty_scales_with_the_count() -> None:
    params = SamplingParams(temperature=0.0, frequency_penalty=0.6)
    logits = logits_of(3.0, 2.0, -9.0, -9.0)
    assert pick(params, logits, output=[0]) == 0  # 3.0 - 0.6
    assert pick(params, logits, output=[0, 0]) == 1  # 3.0 - 1.2
    assert pick(replace(params, frequency_penalty=2.0), logits, prompt=[0]) == 0  # the prompt does not count


def test_presence_penalty_is_paid_once() -> None:
    params = SamplingParams(temperature=0.0, presence_penalty=0.9)
    logits = logits_of(3.0, 2.0, -9.0, -9.0)
    assert pick(params, logits, output=[0, 0, 0]) == 0  # 3.0 - 0.9
    assert pick(replace(params, presence_penalty=1.5), logits, output=[0]) == 1
    assert pick(replace(params, presence_penalty=-1.5), logits_of(2.0, 3.0, -9.0, -9.0), output=[0]) == 0


def test_penalty_state_follows_a_growing_output() -> None:
    params = SamplingParams(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.2)
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randn(16, generator=generator) for _ in range(30)]
    prompt = [1, 2, 3]
    sampler, output = Sampler(params, prompt, []), []
    for logits in rows:
        fresh = Sampler(params, prompt, []).pick(logits, output).token_id
        assert sampler.pick(logits, output).token_id == fresh
        output.append(fresh)
    assert len(set(output)) > 3  # the penalties moved the picks around
    short = output[:5]  # a shorter output than last time is counted again from scratch
    assert sampler.pick(rows[0], short).token_id == Sampler(params, prompt, []).pick(rows[0], short).token_id


def test_min_tokens_blocks_eos_and_stop_token_ids() -> None:
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=(2,))
    logits = logits_of(0.0, 1.0, 4.0, 5.0)  # EOS (3) then the stop token (2) are most likely
    assert pick(params, logits, output=[]) == 1
    assert pick(params, logits, output=[1]) == 1
    assert pick(params, logits, output=[1, 1]) == EOS


def test_ignore_eos_never_picks_eos() -> None:
    params = SamplingParams(temperature=0.0, ignore_eos=True, stop_token_ids=(2,))
    logits = logits_of(0.0, 1.0, 4.0, 5.0)
    assert pick(params, logits, output=[1] * 10) == 2  # stop_token_ids are still allowed
    sampled = draws(SamplingParams(ignore_eos=True, seed=0), logits_of(0.0, 0.0, 0.0, 8.0), 200)
    assert EOS not in sampled


def test_several_eos_ids_are_all_blocked() -> None:
    sampler = Sampler(SamplingParams(temperature=0.0, ignore_eos=True), [], [2, 3])
    assert sampler.pick(logits_of(0.0, 1.0, 4.0, 5.0), []).token_id == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_logprobs_are_the_raw_distribution(dtype: torch.dtype) -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1)).to(dtype)
    params = SamplingParams(temperature=0.7, top_k=5, repetition_penalty=1.5, logprobs=5, seed=3)
    result = Sampler(params, [0, 1, 2], [EOS]).pick(logits, [4, 4])
    raw = torch.log_softmax(logits if dtype == torch.float64 else logits.float(), dim=-1)
    assert result.logprob == float(raw[result.token_id])
    assert [token_id for token_id, _ in result.top] == torch.topk(raw, 5).indices.tolist()
    assert [value for _, value in result.top] == sorted((value for _, value in result.top), reverse=True)
    assert [value for _, value in result.top] == [float(raw[token_id]) for token_id, _ in result.top]


def test_logprobs_zero_gives_the_chosen_token_only_and_none_gives_nothing() -> None:
    logits = logits_of(0.0, 1.0, 2.0, -1.0)
    chosen = Sampler(replace(GREEDY, logprobs=0), [], [EOS]).pick(logits, [])
    assert chosen.token_id == 2
    assert chosen.logprob == pytest.approx(float(torch.log_softmax(logits, dim=-1)[2]))
    assert chosen.top == ()
    plain = Sampler(GREEDY, [], [EOS]).pick(logits, [])
    assert (plain.logprob, plain.top) == (None, ())


def test_the_logits_row_is_left_unchanged() -> None:
    logits = torch.randn(32, generator=torch.Generator().manual_seed(2))
    before = logits.clone()
    params = SamplingParams(
        repetition_penalty=1.5, frequency_penalty=1.0, min_tokens=4, top_k=5, top_p=0.9, min_p=0.1, seed=0
    )
    Sampler(params, [1, 2], [EOS]).pick(logits, [5, 5])
    assert torch.equal(logits, before)


def test_a_batch_shaped_row_is_refused() -> None:
    with pytest.raises(ValueError, match="one row"):
        Sampler(GREEDY, [], [EOS]).pick(torch.zeros(1, 8), [])


def test_check_accepts_defaults_and_boundaries() -> None:
    check(SamplingParams())
    check(
        SamplingParams(
            temperature=2.0,
            top_p=1.0,
            top_k=0,
            min_p=1.0,
            presence_penalty=-2.0,
            frequency_penalty=2.0,
            repetition_penalty=2.0,
            max_tokens=1,
            min_tokens=1,
            logprobs=20,
            stop=("a", "b", "c", "d"),
        )
    )
    check(SamplingParams(temperature=0.0, logprobs=0, max_tokens=None, min_tokens=100))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"temperature": -0.1}, ["temperature", "[0, 2]"]),
        ({"temperature": 2.5}, ["temperature", "[0, 2]"]),
        ({"temperature": math.nan}, ["temperature"]),
        ({"top_p": 0.0}, ["top_p", "(0, 1]"]),
        ({"top_p": 1.1}, ["top_p", "(0, 1]"]),
        ({"top_k": -1}, ["top_k", ">= 0"]),
        ({"min_p": 1.5}, ["min_p", "[0, 1]"]),
        ({"presence_penalty": 2.1}, ["presence_penalty", "[-2, 2]"]),
        ({"frequency_penalty": -3.0}, ["frequency_penalty", "[-2, 2]"]),
        ({"repetition_penalty": 0.0}, ["repetition_penalty", "(0, 2]"]),
        ({"repetition_penalty": 2.5}, ["repetition_penalty", "(0, 2]"]),
        ({"max_tokens": 0}, ["max_tokens", ">= 1"]),
        ({"min_tokens": -1}, ["min_tokens", ">= 0"]),
        ({"min_tokens": 5, "max_tokens": 4}, ["min_tokens", "max_tokens"]),
        ({"logprobs": 21}, ["logprobs", "20"]),
        ({"logprobs": -1}, ["logprobs", "20"]),
        ({"stop": ("a", "b", "c", "d", "e")}, ["stop", "4"]),
        ({"stop": ("a", "")}, ["stop", "non-empty"]),
    ],
)
def test_check_names_the_field_and_its_range(change: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ValueError) as raised:
        check(replace(SamplingParams(), **change))
    for word in words:
        assert word in str(raised.value)
