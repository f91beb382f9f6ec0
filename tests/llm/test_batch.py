"""DecodeBatch: sequences that join, step together and leave get the tokens and logits they get when run alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from ferry.llm.batch import DecodeBatch
from ferry.llm.model import LoadedLM, load_lm
from tests.budget import examples
from tests.llm.tiny import VOCAB_SIZE

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@dataclass(frozen=True)
class Plan:
    """One sequence's life in the batch: its prompt, the step it joins at, and how many decoding steps it stays."""

    prompt: list[int]
    join: int
    steps: int


@dataclass
class Trace:
    logits: list[torch.Tensor]
    tokens: list[int]


@pytest.fixture(scope="module")
def lm64(tiny_llama: Path) -> LoadedLM:
    return load_lm(tiny_llama, dtype="float64", device="cpu")[0]


@pytest.fixture(scope="module")
def lm32(tiny_llama: Path) -> LoadedLM:
    return load_lm(tiny_llama, dtype="float32", device="cpu")[0]


def run_batched(lm: LoadedLM, plans: Sequence[Plan]) -> list[Trace]:
    """Greedy decoding of every plan in one DecodeBatch: joins at their tick, leaves after their steps."""
    batch = DecodeBatch(lm)
    traces = [Trace([], []) for _ in plans]
    last_tick = max(p.join + p.steps for p in plans)
    for tick in range(last_tick + 1):
        for i, plan in enumerate(plans):
            if plan.join == tick:
                _record(traces[i], batch.prefill(i, plan.prompt))
        _leave_finished(batch, plans, traces)
        if len(batch):
            for i, logits in batch.step({i: traces[i].tokens[-1] for i in range(len(plans)) if i in batch}).items():
                _record(traces[i], logits)
            _leave_finished(batch, plans, traces)
    assert len(batch) == 0
    return traces


def _record(trace: Trace, logits: torch.Tensor) -> None:
    trace.logits.append(logits.clone())
    trace.tokens.append(int(logits.argmax()))


def _leave_finished(batch: DecodeBatch, plans: Sequence[Plan], traces: list[Trace]) -> None:
    for i, plan in enumerate(plans):
        if i in batch and len(traces[i].logits) == plan.steps + 1:
            assert batch.length(i) == len(plan.prompt) + plan.steps
            batch.remove(i)


def run_alone(lm: LoadedLM, prompt: list[int], fed: list[int]) -> list[torch.Tensor]:
    """The model's own forward with its own cache, batch of one: logits after the prompt and after each fed token."""
    cache = DynamicCache(config=lm.model.config)
    inputs = [prompt] + [[token] for token in fed]
    out = []
    with torch.inference_mode():
        for ids in inputs:
            result = lm.model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
            cache = result.cache
            out.append(result.logits[0, -1])
    return out


def assert_same_as_alone(lm: LoadedLM, plans: Sequence[Plan], traces: list[Trace], atol: float) -> None:
    for plan, trace in zip(plans, traces, strict=True):
        alone = run_alone(lm, plan.prompt, trace.tokens[:-1])
        assert trace.tokens == [int(logits.argmax()) for logits in alone]
        diff = max(float((b - a).abs().max()) for b, a in zip(trace.logits, alone, strict=True))
        assert diff <= atol, f"{plan}: logits differ by {diff}"


plans_strategy = st.lists(
    st.builds(
        Plan,
        prompt=st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=1, max_size=40),
        join=st.integers(0, 6),
        steps=st.integers(0, 8),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=examples(15), deadline=None)
@given(plans=plans_strategy)
def test_batched_greedy_decoding_equals_each_sequence_run_alone(lm64: LoadedLM, plans: list[Plan]) -> None:
    traces = run_batched(lm64, plans)
    assert_same_as_alone(lm64, plans, traces, atol=1e-6)


def test_float32_batch_matches_alone_within_tolerance(lm32: LoadedLM) -> None:
    plans = [
        Plan(prompt=list(range(3, 20)), join=0, steps=6),
        Plan(prompt=[5], join=0, steps=2),
        Plan(prompt=list(range(300, 340)), join=2, steps=8),
        Plan(prompt=[9, 8, 7], join=3, steps=0),
        Plan(prompt=list(range(40, 50)), join=10, steps=3),  # joins after the batch emptied
    ]
    traces = run_batched(lm32, plans)
    assert [len(t.tokens) for t in traces] == [7, 3, 9, 1, 4]
    assert_same_as_alone(lm32, plans, traces, atol=1e-4)


def test_logits_have_the_vocab_shape_and_model_dtype(lm32: LoadedLM) -> None:
    batch = DecodeBatch(lm32)
    logits = batch.prefill(1, [1, 2, 3])
    assert logits.shape == (VOCAB_SIZE,)
    assert logits.dtype == torch.float32
    stepped = batch.step({1: int(logits.argmax())})
    assert list(stepped) == [1]
    assert stepped[1].shape == (VOCAB_SIZE,)


def test_membership_and_lengths_follow_joins_steps_and_leaves(lm32: LoadedLM) -> None:
    batch = DecodeBatch(lm32)
    batch.prefill(7, [10, 11, 12, 13])
    batch.prefill(8, [20])
    assert len(batch) == 2
    assert 7 in batch and 8 in batch and 9 not in batch
    batch.step({7: 1, 8: 2})
    assert (batch.length(7), batch.length(8)) == (5, 2)
    batch.remove(7)
    assert len(batch) == 1 and 7 not in batch
    assert batch.step({8: 3}).keys() == {8}
    assert batch.length(8) == 3


def test_step_must_name_every_sequence_exactly(lm32: LoadedLM) -> None:
    batch = DecodeBatch(lm32)
    batch.prefill(1, [1, 2])
    batch.prefill(2, [3])
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        batch.step({1: 5})
    with pytest.raises(ValueError, match=r"unknown \[3\]"):
        batch.step({1: 5, 2: 6, 3: 7})
    assert (batch.length(1), batch.length(2)) == (2, 1)


def test_misuse_is_refused(lm32: LoadedLM) -> None:
    batch = DecodeBatch(lm32)
    with pytest.raises(ValueError, match="empty"):
        batch.step({})
    with pytest.raises(ValueError, match="empty prompt"):
        batch.prefill(1, [])
    batch.prefill(1, [4])
    with pytest.raises(ValueError, match="already in the batch"):
        batch.prefill(1, [4])
    with pytest.raises(KeyError):
        batch.remove(2)


def test_max_model_len_bounds_prompts_and_steps(tiny_llama: Path) -> None:
    lm, _ = load_lm(tiny_llama, dtype="float32", device="cpu", max_model_len=4)
    batch = DecodeBatch(lm)
    with pytest.raises(ValueError, match="max_model_len"):
        batch.prefill(1, [1, 2, 3, 4, 5])
    batch.prefill(1, [1, 2, 3])
    batch.step({1: 4})
    assert batch.length(1) == 4
    with pytest.raises(ValueError, match="max_model_len"):
        batch.step({1: 5})
