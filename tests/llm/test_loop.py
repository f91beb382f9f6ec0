"""EngineLoop: sequences join and leave between steps, a batched answer equals the answer alone, the limits hold,
an abort frees the slot, a broken forward pass fails every sequence, close ends them with "abort"."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ferry.errors import EngineError, Overloaded
from ferry.llm.loop import EngineLoop
from ferry.llm.model import load_lm
from ferry.llm.params import SamplingParams
from ferry.settings import usable_cores
from tests.llm.sinks import Collector

pytestmark = pytest.mark.usefixtures("single_torch_thread")
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def lm(tiny_llama: Path) -> Any:
    return load_lm(tiny_llama, dtype="float64")[0]


def _run(loop: EngineLoop, prompts: list[list[int]], params: SamplingParams = GREEDY) -> list[Collector]:
    sinks = [Collector() for _ in prompts]
    for prompt, sink in zip(prompts, sinks, strict=True):
        loop.submit(prompt, params, sink)
    return [sink.wait() for sink in sinks]


def test_sequences_batched_together_get_the_tokens_they_get_alone(lm: Any) -> None:
    prompts = [[5, 6, 7], [40, 41], [100, 101, 102, 103, 104], [9]]
    alone = EngineLoop(lm, "alone", max_num_seqs=1)
    together = EngineLoop(lm, "together", max_num_seqs=4)
    try:
        solo = [_run(alone, [p])[0] for p in prompts]
        batched = _run(together, prompts)
    finally:
        alone.close()
        together.close()
    assert [s.tokens for s in batched] == [s.tokens for s in solo]
    assert [s.text for s in batched] == [s.text for s in solo]
    assert all(s.steps[-1].finish_reason == "length" and s.steps[-1].completion_tokens == 12 for s in batched)
    assert together.stats.steps < alone.stats.steps  # one forward pass served several sequences


def test_max_waiting_refuses_with_503_and_an_abort_frees_the_slot(lm: Any) -> None:
    loop = EngineLoop(lm, "busy", max_num_seqs=1, max_waiting=1)
    long = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    try:
        first, second = Collector(), Collector()
        first_id = loop.submit([5, 6], long, first)
        _until(lambda: first.steps)  # it runs: the one slot is taken
        loop.submit([7, 8], long, second)
        with pytest.raises(Overloaded, match="max_waiting=1"):
            loop.submit([9], long, Collector())
        loop.abort(first_id)
        assert first.wait().steps[-1].finish_reason == "abort"
        assert second.wait().steps[-1].finish_reason == "length"  # it got the slot and ran to its end
    finally:
        loop.close()
    assert loop.stats.finished["abort"] == 1 and loop.stats.running == 0


def test_close_ends_running_and_waiting_sequences_with_abort(lm: Any) -> None:
    loop = EngineLoop(lm, "closing", max_num_seqs=1)
    long = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    running, waiting = Collector(), Collector()
    loop.submit([5], long, running)
    loop.submit([6], long, waiting)
    loop.close()
    assert running.wait().steps[-1].finish_reason == "abort"
    assert waiting.wait().steps[-1].finish_reason == "abort"
    with pytest.raises(EngineError, match="unloaded"):
        loop.submit([7], long, Collector())


def test_a_failing_forward_pass_fails_every_sequence_with_an_engine_error(lm: Any, monkeypatch) -> None:
    loop = EngineLoop(lm, "broken", max_num_seqs=2)
    try:
        monkeypatch.setattr(loop._kv, "forward", _raise)
        sinks = [Collector(), Collector()]
        for prompt, sink in zip(([5], [6]), sinks, strict=True):
            loop.submit(prompt, GREEDY, sink)
        for sink in sinks:
            sink.wait()
            assert isinstance(sink.error, EngineError) and "RuntimeError: out of memory" in str(sink.error)
    finally:
        loop.close()


def _until(check: Any) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _raise(*args: object) -> None:
    raise RuntimeError("out of memory")


def test_stop_strings_cut_the_text_and_min_tokens_hold_them_off(lm: Any) -> None:
    loop = EngineLoop(lm, "stops", max_num_seqs=2)
    try:
        free = _run(loop, [[5, 6, 7]], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0].text
        stop = free[6:8]
        cut = _run(loop, [[5, 6, 7]], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=(stop,)))
        assert cut[0].text == free[: free.index(stop)] and cut[0].steps[-1].finish_reason == "stop"
    finally:
        loop.close()


def test_with_several_workers_the_engine_thread_uses_its_worker_s_share_of_the_cores(
    lm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ferry serve --workers N` (FERRY_WORKERS): the engine's torch ops run on cores / N threads, not on every core
    (N engines would take turns on them). A thread keeps its own count once it ran torch ops (OpenMP)."""
    import torch

    cores = usable_cores()
    if cores == 1:
        pytest.skip("one usable core: a share of it is the whole")
    monkeypatch.setenv("FERRY_WORKERS", str(cores))
    torch.set_num_threads(cores)  # what a new thread starts with by default (single_torch_thread restores it)
    seen: list[int] = []
    hook = lm.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    loop = EngineLoop(lm, "shared")
    try:
        _run(loop, [[5, 6, 7]], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    finally:
        loop.close()
        hook.remove()
    assert seen and set(seen) == {1}, seen
