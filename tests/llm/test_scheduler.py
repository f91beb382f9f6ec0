"""The scheduler under load: random arrivals, lengths, stops, aborts and seeds, a KV budget small enough to
preempt, prefill in chunks, shared prefixes; every sequence gets the tokens it gets alone (tie-aware, float64).

Arrivals and aborts happen between steps, exactly: a request arrives when an earlier one has received its k-th
step (its sink submits it on the engine thread), and an aborted one aborts itself at its k-th step.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

from ferry.llm.blocks import BlockPool
from ferry.llm.budget import DEFAULT_SHARE, free_memory, plan_budget
from ferry.llm.loop import EngineLoop
from ferry.llm.model import LoadedLM, load_lm
from ferry.llm.paged import kv_bytes_per_token
from ferry.llm.params import SamplingParams, Step
from ferry.llm.scheduler import ChunkSizer, KVSeq, Scheduler
from tests.budget import examples
from tests.llm.sinks import Collector
from tests.llm.tiny import VOCAB_SIZE

pytestmark = pytest.mark.usefixtures("single_torch_thread")
TIE = 1e-6
"""Top-two log-probability gaps below this make the solo run's pick a tie: batching's last-bit differences may
pick the other one, so tokens are compared only up to the first such step."""
PREFIXES = ([], list(range(3, 37)), [*range(3, 21), *range(200, 230)])
"""Prompts start with one of these (the second and third share 18 tokens), so prefixes are cached and hit."""


@pytest.fixture(scope="module")
def lm(tiny_llama: Path) -> LoadedLM:
    return load_lm(tiny_llama, dtype="float64", device="cpu")[0]


@dataclass(frozen=True)
class Request:
    prompt: list[int]
    params: SamplingParams
    after: tuple[int, int] | None = None
    """(an earlier request, its step): this one is submitted when that one received that step (or ended)."""
    abort_at: int | None = None
    """This one aborts itself when it received this many steps."""


@dataclass(frozen=True)
class Setup:
    max_num_seqs: int
    block_size: int
    spare_tokens: int
    """KV budget beyond the longest request: small budgets preempt."""
    batched_tokens: int
    prefix_caching: bool
    chunked: bool


@st.composite
def requests(draw: Any) -> list[Request]:
    out: list[Request] = []
    for i in range(draw(st.integers(1, 6))):
        if out and draw(st.integers(0, 3)) == 0:  # the same prompt again: all of it cached
            prompt = out[draw(st.integers(0, len(out) - 1))].prompt
        else:
            suffix = draw(st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=1, max_size=12))
            prompt = draw(st.sampled_from(PREFIXES[1:] * 2 + PREFIXES[:1])) + suffix
        sampled = draw(st.booleans())
        params = SamplingParams(
            max_tokens=draw(st.integers(1, 20)),
            temperature=0.9 if sampled else 0.0,
            seed=draw(st.integers(0, 1000)) if sampled else None,
            stop_token_ids=tuple(draw(st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=2))),
            ignore_eos=draw(st.booleans()),
            logprobs=2,
        )
        after = (draw(st.integers(0, i - 1)), draw(st.integers(1, 8))) if i and draw(st.booleans()) else None
        abort_at = draw(st.integers(1, 10)) if draw(st.integers(0, 4)) == 0 else None
        out.append(Request(prompt, params, after, abort_at))
    return out


setups = st.builds(
    Setup,
    max_num_seqs=st.integers(1, 4),
    block_size=st.sampled_from([1, 4, 16]),
    spare_tokens=st.integers(0, 30),
    batched_tokens=st.integers(4, 48),
    prefix_caching=st.sampled_from([True, True, True, False]),
    chunked=st.sampled_from([True, True, False]),
)


class Watcher(Collector):
    """Collects one request's steps; submits the requests waiting on its steps and aborts itself on cue."""

    def __init__(self, run: Run, index: int) -> None:
        super().__init__()
        self.run, self.index = run, index
        self.seq_id: int | None = None

    def __call__(self, item: Step | BaseException) -> None:
        super().__call__(item)
        run, request = self.run, self.run.requests[self.index]
        received, ended = len(self.steps), self.done.is_set()
        for later, waiting in enumerate(run.requests):
            if waiting.after and waiting.after[0] == self.index and (ended or waiting.after[1] == received):
                run.submit(later)
        if request.abort_at == received and not ended:
            with run.lock:
                assert self.seq_id is not None
                run.loop.abort(self.seq_id)


@dataclass
class Run:
    loop: EngineLoop
    requests: list[Request]
    sinks: list[Watcher] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, index: int) -> None:
        with self.lock:
            sink = self.sinks[index]
            if sink.seq_id is None:
                request = self.requests[index]
                sink.seq_id = self.loop.submit(request.prompt, request.params, sink)


def _budget(lm: LoadedLM, tokens: int, block_size: int = 16) -> Any:
    return plan_budget(kv_bytes_per_token(lm), lm.device, block_size=block_size, tokens=tokens)


def run_together(lm: LoadedLM, setup: Setup, requests: list[Request]) -> tuple[list[Watcher], EngineLoop]:
    longest = max(len(r.prompt) + (r.params.max_tokens or 0) for r in requests)
    budget = _budget(lm, max(16, longest + setup.spare_tokens), block_size=setup.block_size)
    loop = EngineLoop(
        lm,
        "together",
        max_num_seqs=setup.max_num_seqs,
        budget=budget,
        max_num_batched_tokens=max(setup.batched_tokens, setup.max_num_seqs),
        prefix_caching=setup.prefix_caching,
        chunked_prefill=setup.chunked,
    )
    run = Run(loop, requests)
    run.sinks = [Watcher(run, i) for i in range(len(requests))]
    try:
        for i, request in enumerate(requests):
            if request.after is None:
                run.submit(i)
        for sink in run.sinks:
            sink.wait()
    finally:
        loop.close()
    return run.sinks, loop


def run_alone(lm: LoadedLM, request: Request) -> Collector:
    loop = EngineLoop(lm, "alone", max_num_seqs=1, prefix_caching=False)
    try:
        sink = Collector()
        loop.submit(request.prompt, replace(request.params), sink)
        return sink.wait()
    finally:
        loop.close()


def assert_same_up_to_a_tie(together: Collector, alone: Collector, request: Request, label: str) -> None:
    got, want = together.tokens, alone.tokens
    if together.finish_reason == "abort":
        want = want[: len(got)]
    else:
        assert together.finish_reason == alone.finish_reason or _tie_before(alone, _first_difference(got, want)), label
    diverged = _first_difference(got, want)
    if diverged is None:
        return
    assert _tie_before(alone, diverged), f"{label}: tokens differ at {diverged} with no tie before: {got} vs {want}"


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _tie_before(alone: Collector, index: int | None) -> bool:
    if index is None:
        return True
    gaps = [lp.top[0].logprob - lp.top[1].logprob for step in alone.steps for lp in step.logprobs or ()]
    return any(gap < TIE for gap in gaps[: index + 1])


@settings(max_examples=examples(25), deadline=None)
@given(setup=setups, reqs=requests())
def test_every_sequence_gets_what_it_gets_alone(lm: LoadedLM, setup: Setup, reqs: list[Request]) -> None:
    together, loop = run_together(lm, setup, reqs)
    target(float(loop.stats.preemptions), label="preemptions")  # steer the search toward the rare paths
    target(float(loop.stats.prefix_hits), label="prefix hits")
    for i, (request, sink) in enumerate(zip(reqs, together, strict=True)):
        assert_same_up_to_a_tie(sink, run_alone(lm, request), request, f"request {i} of {reqs} with {setup}")
    assert loop.stats.kv_blocks_used == 0  # every block came back


# ---- the policy, one case each ------------------------------------------------------------------------------


GREEDY = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, logprobs=2)


def test_a_shared_prefix_is_computed_once_and_counted_as_hits(lm: LoadedLM) -> None:
    shared = list(range(3, 67))  # 64 tokens: four blocks of 16
    first, second = [*shared, 300, 301, 302], [*shared, 310, 311]
    loop = EngineLoop(lm, "prefix", budget=_budget(lm, 512))
    try:
        loop.submit(first, GREEDY, a := Collector())
        a.wait()
        prefilled = loop.stats.prompt_tokens
        loop.submit(second, GREEDY, b := Collector())
        b.wait()
    finally:
        loop.close()
    assert loop.stats.prefix_queries == len(first) + len(second)
    assert loop.stats.prefix_hits == 64
    assert loop.stats.prompt_tokens - prefilled == len(second) - 64  # only the suffix was prefilled
    assert_same_up_to_a_tie(b, run_alone(lm, Request(second, GREEDY)), Request(second, GREEDY), "second")


def test_a_budget_too_small_for_everyone_preempts_the_newest_and_all_finish_as_alone(lm: LoadedLM) -> None:
    prompts = [list(range(10 * i + 5, 10 * i + 13)) for i in range(3)]  # 8 tokens each, 38 with their output
    loop = EngineLoop(lm, "tight", max_num_seqs=3, budget=_budget(lm, 48, block_size=4))
    try:
        sinks = [Collector() for _ in prompts]
        for prompt, sink in zip(prompts, sinks, strict=True):
            loop.submit(prompt, GREEDY, sink)
        for sink in sinks:
            sink.wait()
    finally:
        loop.close()
    assert loop.stats.preemptions > 0 and loop.stats.kv_blocks_used == 0
    for prompt, sink in zip(prompts, sinks, strict=True):
        assert sink.finish_reason == "length" and len(sink.tokens) == 30
        request = Request(prompt, GREEDY)
        assert_same_up_to_a_tie(sink, run_alone(lm, request), request, str(prompt))


def test_a_long_prompt_is_prefilled_in_chunks_of_max_num_batched_tokens(lm: LoadedLM) -> None:
    prompt = [(7 * i) % VOCAB_SIZE for i in range(100)]
    params = replace(GREEDY, max_tokens=3)
    loop = EngineLoop(lm, "chunks", max_num_seqs=2, max_num_batched_tokens=8)
    try:
        loop.submit(prompt, params, sink := Collector())
        sink.wait()
    finally:
        loop.close()
    assert loop.stats.steps == 13 + 2  # ceil(100 / 8) prefill steps, then two decoding steps
    assert_same_up_to_a_tie(sink, run_alone(lm, Request(prompt, params)), Request(prompt, params), "chunked")


def test_without_chunked_prefill_a_long_prompt_is_prefilled_in_one_step(lm: LoadedLM) -> None:
    loop = EngineLoop(lm, "whole", max_num_seqs=2, max_num_batched_tokens=8, chunked_prefill=False)
    try:
        loop.submit([(7 * i) % VOCAB_SIZE for i in range(100)], replace(GREEDY, max_tokens=3), sink := Collector())
        sink.wait()
    finally:
        loop.close()
    assert loop.stats.steps == 1 + 2


def test_while_sequences_decode_a_prompt_gets_only_a_chunk_and_decodes_go_first() -> None:
    scheduler = Scheduler(BlockPool(64, 16), max_num_seqs=4, max_num_batched_tokens=512)
    running = KVSeq(0, [1, 2, 3])
    scheduler.add(running)
    [first] = scheduler.schedule()
    scheduler.computed(first)
    running.tokens.append(4)  # its first token picked: it decodes now
    scheduler.add(KVSeq(1, list(range(300))))
    plan = scheduler.schedule()
    assert [(p.seq.id, p.count, p.decode) for p in plan] == [(0, 1, True), (1, scheduler.chunks.limit(), False)]
    assert scheduler.chunks.limit() < 300


def test_a_burst_of_prompts_gets_a_chunk_each_while_one_sequence_decodes() -> None:
    scheduler = Scheduler(BlockPool(256, 16), max_num_seqs=8, max_num_batched_tokens=4096)
    running = KVSeq(0, [1, 2, 3])
    scheduler.add(running)
    scheduler.computed(scheduler.schedule()[0])
    running.tokens.append(4)
    for seq_id in range(1, 4):
        scheduler.add(KVSeq(seq_id, list(range(200))))
    plan = scheduler.schedule()
    assert plan[0].decode and [p.seq.id for p in plan] == [0, 1, 2, 3]
    assert sum(p.count for p in plan[1:]) == 3 * scheduler.chunks.limit()  # a chunk for each waiting prompt


def test_the_chunk_limit_follows_measured_step_times() -> None:
    sizer = ChunkSizer(ceiling=512)
    assert sizer.limit() == 64  # nothing measured yet
    sizer.observe(0.050, decodes=4, prefill_tokens=0)  # a plain decoding step
    sizer.observe(0.150, decodes=4, prefill_tokens=100)  # 100 prefill tokens cost 0.1 s more
    assert sizer.limit() == 50  # a chunk that takes about one decoding step
    sizer.observe(10.0, decodes=0, prefill_tokens=20)  # a slow device: the floor holds
    assert sizer.limit() >= 16


def test_the_budget_comes_from_tokens_bytes_or_free_memory_and_cuts_max_model_len(
    lm: LoadedLM, caplog: pytest.LogCaptureFixture
) -> None:
    per_token = kv_bytes_per_token(lm)
    assert plan_budget(per_token, lm.device, block_size=16, tokens=100).blocks == 7  # rounded up to whole blocks
    assert plan_budget(per_token, lm.device, memory_bytes=per_token * 64).tokens == 64
    by_share = plan_budget(per_token, lm.device)
    assert 0 < by_share.bytes <= free_memory(lm.device) * DEFAULT_SHARE + per_token * 16
    assert "free on cpu" in by_share.source
    with pytest.MonkeyPatch.context() as env:  # `ferry serve --workers 4`: each worker's engine takes a quarter
        env.setenv("FERRY_WORKERS", "4")
        shared = plan_budget(per_token, lm.device)
    assert 0 < shared.bytes <= free_memory(lm.device) * DEFAULT_SHARE / 4 + per_token * 16
    assert shared.bytes < by_share.bytes / 2 and "split between 4 workers" in shared.source
    with pytest.raises(ValueError, match="too small"):
        plan_budget(per_token, lm.device, tokens=8)
    loop = EngineLoop(lm, "small", budget=_budget(lm, 64))
    loop.close()
    assert loop.max_model_len == 64 and "max_model_len 512 is cut to 64 tokens, the KV budget" in caplog.text
