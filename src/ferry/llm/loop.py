"""EngineLoop: one thread per loaded version owns the running sequences and batches them per decoding step.

Each turn of the loop: drop the sequences whose clients went away, let the scheduler (``llm/scheduler.py``) pick
the step's work within the KV budget (a token for each decoding sequence, prefill chunks, newly admitted
prompts), run it as ONE forward pass over the paged KV cache (``llm/paged.py``), pick the next token of every
sequence whose known tokens are all computed now, and hand each its ``Step``. A sequence leaves the batch the step
it ends; a new one joins the next. Nothing here waits on a client: a ``Step`` goes to its sequence's sink
(``Sink``), which must only hand it over (the llm engine's puts it on an asyncio queue).

Past ``max_waiting`` queued sequences, ``submit`` refuses with ``Overloaded`` (503 with Retry-After). A sequence with
a ``response_format`` gets its grammar's matcher in ``submit`` (compiled once per schema, ``llm/grammar.py``); its
picks follow the grammar, and it ends with "stop" once the grammar is complete.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from ferry.errors import EngineError, InvalidInput, Overloaded
from ferry.llm.blocks import BlockPool
from ferry.llm.budget import KVBudget, plan_budget
from ferry.llm.grammar import GrammarCompiler, GrammarMatcher
from ferry.llm.model import LoadedLM
from ferry.llm.packed import crowding, pack_linears, packing_pays
from ferry.llm.paged import Chunk, PagedKV, kv_bytes_per_token, sliding_window
from ferry.llm.params import SamplingParams, Step, TokenLogprob, TopLogprob
from ferry.llm.sampling import Pick, Sampler
from ferry.llm.scheduler import KVSeq, Scheduled, Scheduler
from ferry.llm.text import Detokenizer, StopMatcher
from ferry.settings import cores_per_worker, serving_workers

log = logging.getLogger(__name__)

Sink = Callable[[Step | BaseException], None]
"""Where a sequence's steps go, called on the engine thread: a Step, or the error that ended the sequence."""


@dataclass
class LoopStats:
    """What the loop has done, for metrics and logs (read from any thread; ints only)."""

    running: int = 0
    waiting: int = 0
    finished: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0, "abort": 0})
    prompt_tokens: int = 0
    """Tokens prefilled (prompts, and the tokens of preempted sequences computed again)."""
    generation_tokens: int = 0
    steps: int = 0
    kv_blocks: int = 0
    kv_blocks_used: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    preemptions: int = 0


class Sequence_(KVSeq):
    """One sequence: its prompt, what it generated, how it samples and detokenizes, where its steps go."""

    def __init__(
        self,
        seq_id: int,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        lm: LoadedLM,
        sink: Sink,
        grammar: GrammarMatcher | None = None,
    ):
        super().__init__(seq_id, prompt_ids)
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sink = sink
        self.output_ids: list[int] = []
        self.grammar = grammar
        self.sampler = Sampler(params, prompt_ids, lm.eos_token_ids, grammar)
        self.detok = Detokenizer(lm.tokenizer, prompt_ids)
        self.stops = StopMatcher(params.stop)
        self.stop_matched = False
        self.submitted = time.monotonic()


class EngineLoop:
    """The running and waiting sequences of one loaded model, and the thread that decodes them."""

    def __init__(
        self,
        lm: LoadedLM,
        name: str,
        max_num_seqs: int = 16,
        max_waiting: int = 256,
        *,
        budget: KVBudget | None = None,
        max_num_batched_tokens: int | None = None,
        prefix_caching: bool = True,
        chunked_prefill: bool = True,
        packed_weights: bool = False,
    ) -> None:
        """``budget``: the KV cache's size (unset: ``plan_budget``'s default for the model's device).
        ``packed_weights``: the engine thread first packs the linear layers for steps of ``max_num_seqs`` rows
        (``llm/packed.py``), where that pays."""
        budget = budget or plan_budget(kv_bytes_per_token(lm), lm.device)
        self.lm = lm
        self.name = name
        self.max_num_seqs = max_num_seqs
        self.max_waiting = max_waiting
        self.budget = budget
        self.prefix_caching = prefix_caching
        self.packed_weights = packed_weights and packing_pays(lm.dtype, lm.device, max_num_seqs)
        self.max_model_len = _fit_max_model_len(lm, budget, name)
        """Prompt and output tokens of one sequence at most: the model's, cut to the KV budget where smaller."""
        self.stats = LoopStats(kv_blocks=budget.blocks)
        self._kv = PagedKV(lm, budget.blocks, budget.block_size)
        batched = max_num_batched_tokens or max(DEFAULT_BATCHED_TOKENS, max_num_seqs)
        pool = BlockPool(budget.blocks, budget.block_size, prefix_caching)
        self._scheduler = Scheduler(pool, max_num_seqs, batched, chunked=chunked_prefill)
        self._grammars = GrammarCompiler(lm.tokenizer, lm.eos_token_ids)
        self._incoming: deque[Sequence_] = deque()
        """Submitted, not yet seen by the engine thread (any thread appends, under the lock)."""
        self._queued = 0
        """Sequences the scheduler holds waiting, as of the engine thread's last turn."""
        self._seqs: dict[int, Sequence_] = {}
        """Every sequence the scheduler holds, by id; only the engine thread reads or changes it."""
        self._aborts: set[int] = set()
        """Ids of sequences whose clients went away (any thread adds, under the lock)."""
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"ferry-llm {name}", daemon=True)
        self._thread.start()

    # the callers' side (any thread) ----------------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Sink) -> int:
        """Queue a sequence; its steps go to ``sink``. Returns its id (for ``abort``).

        Raises Overloaded when ``max_waiting`` sequences wait already, EngineError once the loop is closed,
        InvalidInput (400) when ``params.response_format`` cannot be honoured for this model."""
        grammar = self._grammar(params.response_format) if params.response_format else None
        with self._wake:
            if self._closed:
                raise EngineError(f"endpoint {self.name}: the model was unloaded; retry", endpoint=self.name)
            waiting = len(self._incoming) + self._queued
            if waiting >= self.max_waiting:
                raise Overloaded(
                    f"endpoint {self.name}: {waiting} sequences wait already (aux config max_waiting="
                    f"{self.max_waiting}, max_num_seqs={self.max_num_seqs}); retry later",
                    endpoint=self.name,
                )
            seq = Sequence_(next(self._ids), prompt_ids, params, self.lm, sink, grammar)
            self._incoming.append(seq)
            self.stats.waiting = waiting + 1
            self._wake.notify()
            return seq.id

    def _grammar(self, response_format: str) -> GrammarMatcher:
        # outside the lock: a first compile of a large schema must not hold up the engine thread's turn
        try:
            return self._grammars.matcher(response_format)
        except ValueError as exc:
            raise InvalidInput(f"endpoint {self.name}: {exc}", param="response_format") from None

    def abort(self, seq_id: int) -> None:
        """End sequence ``seq_id`` at the next step (its client went away); its slot frees, counted as aborted."""
        with self._wake:
            self._aborts.add(seq_id)
            self._wake.notify()

    def close(self) -> None:
        """Stop the thread; sequences still running or waiting end with finish_reason "abort"."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    # the engine thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        _take_share_of_cores()
        try:
            if self.packed_weights:
                self._pack_weights()
            while self._turn():
                pass
        except BaseException as exc:  # a broken forward pass: every sequence hears of it, the loop ends
            log.exception("endpoint %s: the engine loop stopped", self.name)
            self._fail_all(exc)
        else:
            self._fail_all(None)

    def _pack_weights(self) -> None:
        """On this thread (see llm/packed.py), before the first step: requests wait for it (about a second)."""
        started, crowded = time.monotonic(), crowding(self.lm.model)
        if crowded:
            log.info("endpoint %s: linear layers left unpacked: %s", self.name, crowded)
            self.packed_weights = False
            return
        try:
            added = pack_linears(self.lm.model, self.max_num_seqs)
        except Exception as exc:  # an optimisation: whatever refuses, the plain product serves (each layer swaps whole)
            log.warning("endpoint %s: the linear layers stay unpacked (%s)", self.name, exc)
            self.packed_weights = False
            return
        log.info(
            "endpoint %s: linear layers packed for steps of %d sequences in %.1f s (MKL; +%.0f MiB; aux config "
            "packed_weights=false keeps them unpacked)",
            self.name,
            self.max_num_seqs,
            time.monotonic() - started,
            added / 2**20,
        )

    def _turn(self) -> bool:
        """One turn: take in what was submitted and aborted, run a step, hand out. False when the loop is closed."""
        with self._wake:
            while not self._closed and not self._incoming and not self._aborts and not self._seqs:
                self._wake.wait()
            if self._closed:
                return False
            aborts, self._aborts = self._aborts, set()
            incoming, self._incoming = self._incoming, deque()
        for seq in incoming:
            self._seqs[seq.id] = seq
            self._scheduler.add(seq)
        for seq_id in aborts & self._seqs.keys():
            self._finish(self._seqs[seq_id], "abort")
        if self._seqs:
            self._step()
        self._count()
        return True

    def _step(self) -> None:
        plan = self._scheduler.schedule()
        if not plan:
            return
        chunks = [_chunk(item) for item in plan]
        started = time.perf_counter()
        logits = self._kv.forward(chunks)
        prefill = sum(item.count for item in plan if not item.decode)
        decodes = sum(item.decode for item in plan)
        self._scheduler.chunks.observe(time.perf_counter() - started, decodes, prefill)
        self.stats.steps += 1
        self.stats.prompt_tokens += prefill
        completed = [cast(Sequence_, item.seq) for item in plan if item.completes]
        for item in plan:
            self._scheduler.computed(item)
        for seq in completed:
            self._advance(seq, logits[seq.id])

    def _count(self) -> None:
        scheduler, stats = self._scheduler, self.stats
        with self._wake:
            self._queued = len(scheduler.waiting)
            stats.waiting = self._queued + len(self._incoming)
        stats.running = len(scheduler.running)
        stats.kv_blocks_used = scheduler.pool.used
        stats.prefix_queries, stats.prefix_hits = scheduler.prefix_queries, scheduler.prefix_hits
        stats.preemptions = scheduler.preemptions

    def _advance(self, seq: Sequence_, logits: Any) -> None:
        """Pick ``seq``'s next token from ``logits`` and hand it its step; end it when it is done."""
        pick = seq.sampler.pick(logits, seq.output_ids)
        self.stats.generation_tokens += 1
        token, params = pick.token_id, seq.params
        seq.output_ids.append(token)
        seq.tokens.append(token)
        logprobs = self._logprobs(seq, pick)
        ending = len(seq.output_ids) > params.min_tokens
        if ending and (token in params.stop_token_ids or not params.ignore_eos and token in self.lm.eos_token_ids):
            return self._finish(seq, "stop", Step("", [token], logprobs))
        complete = seq.grammar is not None and seq.grammar.consume(token)
        text = seq.detok.feed(token)
        if ending:  # stop strings count from min_tokens on, as end of sequence does
            text, seq.stop_matched = seq.stops.feed(text)
        step = Step(text, [token], logprobs)
        if seq.stop_matched or complete:
            return self._finish(seq, "stop", step)
        if self._at_length(seq):
            return self._finish(seq, "length", step)
        self._send(seq, step)

    def _at_length(self, seq: Sequence_) -> bool:
        limit = seq.params.max_tokens
        if limit is not None and len(seq.output_ids) >= limit:
            return True
        return len(seq.prompt_ids) + len(seq.output_ids) >= self.max_model_len

    def _finish(self, seq: Sequence_, reason: str, last: Step | None = None) -> None:
        """The sequence's last step: ``last`` with what was held back (unless a stop string cut it) and ``reason``."""
        if self._seqs.pop(seq.id, None) is not None:
            self._scheduler.finish(seq)
        step = last or Step()
        if not seq.stop_matched:
            held, seq.stop_matched = seq.stops.feed(seq.detok.flush())
            step.text += held if seq.stop_matched else held + seq.stops.flush()
        step.finish_reason = reason
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        self._send(seq, step)

    def _send(self, seq: Sequence_, step: Step) -> None:
        step.prompt_tokens, step.completion_tokens = len(seq.prompt_ids), len(seq.output_ids)
        seq.sink(step)

    def _logprobs(self, seq: Sequence_, pick: Pick) -> list[TokenLogprob] | None:
        if pick.logprob is None:
            return None
        text = seq.detok.token_text
        top = tuple(TopLogprob(t, text(t), lp) for t, lp in pick.top)
        return [TokenLogprob(pick.token_id, text(pick.token_id), pick.logprob, top)]

    def _fail_all(self, exc: BaseException | None) -> None:
        with self._wake:
            self._closed = True
            pending = list(self._incoming) + list(self._seqs.values())
            self._incoming.clear()
            self._seqs.clear()
        for seq in pending:
            if exc is None:
                self._send(seq, Step(finish_reason="abort"))
            else:
                seq.sink(EngineError(f"endpoint {self.name}: the engine loop failed: {type(exc).__name__}: {exc}"))


def _fit_max_model_len(lm: LoadedLM, budget: KVBudget, name: str) -> int:
    """``lm.max_model_len``, cut to what one sequence can hold: the KV budget, and a sliding attention window (the
    paged attention sees the whole context, which equals the window's only within it)."""
    limits = [(budget.tokens, f"the KV budget ({budget.source})")]
    window = sliding_window(lm.model.config)
    if window is not None:
        limits.append((window, "the model's sliding attention window"))
    length = lm.max_model_len
    for limit, why in limits:
        if limit < length:
            log.warning("endpoint %s: max_model_len %d is cut to %d tokens, %s", name, length, limit, why)
            length = limit
    return length


DEFAULT_BATCHED_TOKENS = 512
"""Prefill tokens a step may carry when nothing decodes (aux config max_num_batched_tokens)."""


def _chunk(item: Scheduled) -> Chunk:
    seq = item.seq
    tokens = seq.tokens[seq.computed : seq.computed + item.count]
    return Chunk(seq.id, tokens, seq.computed, seq.blocks, item.completes)


def _take_share_of_cores() -> None:
    """With `ferry serve --workers N`, this engine thread's torch ops use its worker's share of the cores: N
    engines each spreading over every core would take turns on them. torch keeps a count per thread (OpenMP's),
    which a new thread takes from the last ``set_num_threads``: the engine thread sets its own, first thing."""
    if serving_workers() > 1:
        import torch

        torch.set_num_threads(cores_per_worker())
