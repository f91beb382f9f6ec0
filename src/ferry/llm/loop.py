"""EngineLoop: one thread per loaded version owns the running sequences and batches them per decoding step.

Each turn of the loop: drop the sequences whose clients went away, admit waiting ones while fewer than
``max_num_seqs`` run (each prefilled alone, then joined to the batch), run one forward pass over every running
sequence (``DecodeBatch.step``), pick each one's next token, and hand each its ``Step``. A sequence leaves the
batch the step it ends; a new one joins before the next. Nothing here waits on a client: a ``Step`` goes to its
sequence's sink (``Sink``), which must only hand it over (the llm engine's puts it on an asyncio queue).

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
from typing import Any

from ferry.errors import EngineError, InvalidInput, Overloaded
from ferry.llm.batch import DecodeBatch
from ferry.llm.grammar import GrammarCompiler, GrammarMatcher
from ferry.llm.model import LoadedLM
from ferry.llm.params import SamplingParams, Step, TokenLogprob, TopLogprob
from ferry.llm.sampling import Pick, Sampler
from ferry.llm.text import Detokenizer, StopMatcher

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
    generation_tokens: int = 0
    steps: int = 0


class Sequence_:
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
        self.id = seq_id
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sink = sink
        self.output_ids: list[int] = []
        self.grammar = grammar
        self.sampler = Sampler(params, prompt_ids, lm.eos_token_ids, grammar)
        self.detok = Detokenizer(lm.tokenizer, prompt_ids)
        self.stops = StopMatcher(params.stop)
        self.last_token = -1
        self.stop_matched = False
        self.submitted = time.monotonic()


class EngineLoop:
    """The running and waiting sequences of one loaded model, and the thread that decodes them."""

    def __init__(self, lm: LoadedLM, name: str, max_num_seqs: int = 16, max_waiting: int = 256) -> None:
        self.lm = lm
        self.name = name
        self.max_num_seqs = max_num_seqs
        self.max_waiting = max_waiting
        self.stats = LoopStats()
        self._batch = DecodeBatch(lm)
        self._grammars = GrammarCompiler(lm.tokenizer, lm.eos_token_ids)
        self._waiting: deque[Sequence_] = deque()
        self._running: dict[int, Sequence_] = {}
        """Only the engine thread reads or changes it."""
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
            if len(self._waiting) >= self.max_waiting:
                raise Overloaded(
                    f"endpoint {self.name}: {len(self._waiting)} sequences wait already (aux config max_waiting="
                    f"{self.max_waiting}, max_num_seqs={self.max_num_seqs}); retry later",
                    endpoint=self.name,
                )
            seq = Sequence_(next(self._ids), prompt_ids, params, self.lm, sink, grammar)
            self._waiting.append(seq)
            self.stats.waiting = len(self._waiting)
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
        try:
            while self._turn():
                pass
        except BaseException as exc:  # a broken forward pass: every sequence hears of it, the loop ends
            log.exception("endpoint %s: the engine loop stopped", self.name)
            self._fail_all(exc)
        else:
            self._fail_all(None)

    def _turn(self) -> bool:
        """One turn: admit, step, hand out. False when the loop is closed."""
        with self._wake:
            while not self._closed and not self._waiting and not self._running:
                self._wake.wait()
            if self._closed:
                return False
            aborts, self._aborts = self._aborts, set()
            admitted = self._admit(aborts)
        for seq in admitted:
            self._prefill(seq)
        for seq_id in aborts & self._running.keys():
            self._finish(self._running[seq_id], "abort")
        if self._running:
            self._step()
        return True

    def _admit(self, aborts: set[int]) -> list[Sequence_]:
        """Waiting sequences that get a slot now (the lock is held); those aborted while waiting end here."""
        if aborts:
            for seq in [s for s in self._waiting if s.id in aborts]:
                self._waiting.remove(seq)
                self._finish(seq, "abort")
        admitted: list[Sequence_] = []
        while self._waiting and len(self._running) + len(admitted) < self.max_num_seqs:
            admitted.append(self._waiting.popleft())
        self.stats.waiting = len(self._waiting)
        return admitted

    def _prefill(self, seq: Sequence_) -> None:
        logits = self._batch.prefill(seq.id, seq.prompt_ids)
        self._running[seq.id] = seq
        self.stats.running = len(self._running)
        self.stats.prompt_tokens += len(seq.prompt_ids)
        self._advance(seq, logits)

    def _step(self) -> None:
        logits = self._batch.step({seq_id: seq.last_token for seq_id, seq in self._running.items()})
        self.stats.steps += 1
        for seq_id, row in logits.items():
            self._advance(self._running[seq_id], row)

    def _advance(self, seq: Sequence_, logits: Any) -> None:
        """Pick ``seq``'s next token from ``logits`` and hand it its step; end it when it is done."""
        pick = seq.sampler.pick(logits, seq.output_ids)
        self.stats.generation_tokens += 1
        token, params = pick.token_id, seq.params
        seq.output_ids.append(token)
        logprobs = self._logprobs(seq, pick)
        ending = len(seq.output_ids) > params.min_tokens
        if ending and (token in params.stop_token_ids or not params.ignore_eos and token in self.lm.eos_token_ids):
            return self._finish(seq, "stop", Step("", [token], logprobs))
        complete = seq.grammar is not None and seq.grammar.consume(token)
        seq.last_token = token
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
        return len(seq.prompt_ids) + len(seq.output_ids) >= self.lm.max_model_len

    def _finish(self, seq: Sequence_, reason: str, last: Step | None = None) -> None:
        """The sequence's last step: ``last`` with what was held back (unless a stop string cut it) and ``reason``."""
        if seq.id in self._running:
            del self._running[seq.id]
            self._batch.remove(seq.id)
            self.stats.running = len(self._running)
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
            pending = list(self._waiting) + list(self._running.values())
            self._waiting.clear()
            self._running.clear()
        for seq in pending:
            if exc is None:
                self._send(seq, Step(finish_reason="abort"))
            else:
                seq.sink(EngineError(f"endpoint {self.name}: the engine loop failed: {type(exc).__name__}: {exc}"))
