"""DynamicBatcher: gather concurrent requests, pad ragged axes, run the model once, scatter the rows back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ferry.control.engine_names import effective_max_batch_size, queue_delay_ms
from ferry.control.spec import EndpointSpec
from ferry.engines.tensor import Feeds, TensorEngine
from ferry.errors import FerryError, NotReady, UserCodeError
from ferry.metrics.collectors import NULL_METER, EndpointMeter, NullMeter
from ferry.serving.batching.padding import Axes, cut_by_length, pad_to_largest, unpad
from ferry.serving.batching.patience import Patience
from ferry.serving.request.inline import INLINE_BUDGET_S, CostMeter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """How an endpoint batches, read from its aux config (ferry's keys or Triton's dynamic_batching)."""

    max_batch_size: int = 1
    implicit: bool = False
    """Batching on by default, not asked for: a request that cannot share a batch (rows that do not stack, more
    rows than the cap, a model that refuses stacked input) runs alone instead of failing."""
    max_queue_delay_s: float = 0.0
    preferred_sizes: tuple[int, ...] = ()
    pad_value: float = 0
    instances: int = 1
    group_by_length: bool = False
    """Run a batch of ragged requests as a few model calls of similar lengths (``serving/batching/padding.py``)."""

    @classmethod
    def from_spec(cls, spec: EndpointSpec, default_instances: int = 1) -> BatchPolicy:
        """The policy ``spec`` asks for; ``default_instances`` where it names no ``instances``."""
        aux = spec.aux_config
        triton = given if isinstance(given := aux.get("dynamic_batching"), dict) else {}
        preferred = aux.get("preferred_batch_size", triton.get("preferred_batch_size", []))
        preferred = preferred if isinstance(preferred, (list, tuple)) else [preferred]
        max_batch_size, implicit = effective_max_batch_size(spec.engine, aux)
        return cls(
            max_batch_size=max_batch_size,
            implicit=implicit,
            max_queue_delay_s=queue_delay_ms(aux) / 1000,
            preferred_sizes=tuple(sorted(int(p) for p in preferred)),
            pad_value=float(aux.get("pad_value", 0)),
            instances=max(1, int(aux.get("instances", aux.get("batch_instances", default_instances)))),
            group_by_length=str(aux.get("group_by_length", False)).lower() in ("true", "1"),
        )

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


@dataclass
class _Pending:
    feeds: Feeds
    rows: int
    arrived: float
    future: asyncio.Future[list[np.ndarray]] = field(repr=False)


@dataclass
class _Tally:
    """Input elements the model calls of one batch were given, and how many of them were padding."""

    elements: int = 0
    padded: int = 0


class DynamicBatcher:
    """Wraps one TensorEngine: ``await submit(feeds)`` returns that request's outputs, as if it ran alone."""

    def __init__(
        self,
        engine: TensorEngine,
        policy: BatchPolicy,
        axes: Axes,
        key: str,
        inline_budget_s: float = INLINE_BUDGET_S,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.axes = axes
        self.key = key
        self.batches = 0
        self.batched_rows = 0
        self._queue: deque[_Pending] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event  # both set by _start, which runs before anything reads them
        self._slots: asyncio.Semaphore
        self._dispatcher: asyncio.Task[None] | None = None
        self._running = 0
        """Batches running now (at most ``policy.instances``)."""
        self._executor = ThreadPoolExecutor(policy.instances, thread_name_prefix=f"ferry-batch-{key}")
        self._cost = CostMeter(inline_budget_s)
        self._patience = Patience()
        self._last_arrival = 0.0
        self.coming = 0
        """Requests of this endpoint in a preprocess that does not run inline: they will reach the queue soon, so a
        batch being gathered waits for them (up to the queue delay) whatever ``_patience`` says."""
        self._closed = False
        self.solo = False
        """Batching given up (a default policy only): the model refused a stacked batch that each request passed
        alone, so requests run one at a time from then on."""
        self.meter: EndpointMeter | NullMeter = NULL_METER

    def feeds_for(self, data: Any) -> Feeds | None:
        """``data`` (what preprocess returned) as the arrays of a batch, or None where it runs alone: with batching
        on by default, data that is not rows (a DataFrame, a dict), more rows than the cap, or batching given up.
        With batching asked for (``max_batch_size`` given), such data raises as it always has."""
        try:
            feeds = self.engine.prepare(data)
        except FerryError:
            if self.policy.implicit:
                return None  # alone, the engine takes it (or refuses it with this same error)
            raise
        return feeds if self.admits(feeds) else None

    def admits(self, feeds: Feeds) -> bool:
        """Whether ``feeds`` goes through the queue (always, with batching asked for: ``submit`` checks them)."""
        if not self.policy.implicit:
            return True
        try:
            return not self.solo and _rows(feeds, self.key) <= self.policy.max_batch_size
        except UserCodeError:
            return False

    async def submit(self, feeds: Feeds) -> list[np.ndarray]:
        rows = _rows(feeds, self.key)
        if rows > self.policy.max_batch_size:
            limit = self.policy.max_batch_size
            raise UserCodeError(
                f"endpoint {self.key}: preprocess returned {rows} rows, over max_batch_size {limit}", stage="preprocess"
            )
        if self._closed:
            raise self._unloaded()
        loop = asyncio.get_running_loop()
        self._start(loop)
        pending = _Pending(feeds, rows, time.monotonic(), loop.create_future())
        if self._queue:  # it joins the requests queued before it: their gaps are what a batch waits for
            self._patience.observe(pending.arrived - self._last_arrival)
        self._last_arrival = pending.arrived
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._slots = asyncio.Semaphore(self.policy.instances)
            self._dispatcher = loop.create_task(self._dispatch(), name=f"batcher {self.key}")

    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._slots.acquire()
                await self._gather_window()
                if not self._queue:  # closed while gathering
                    self._slots.release()
                    break
                batch = self._take()
                self._running += 1
                asyncio.get_running_loop().create_task(self._run(batch))

    async def _gather_window(self) -> None:
        """Wait until a full batch is queued, the oldest request has waited the queue delay, or arrivals have
        stopped coming: none in a preprocess on its way here, and none for a while (``Patience``)."""
        deadline = self._queue[0].arrived + self.policy.max_queue_delay_s
        while self._queued_rows() < self.policy.max_batch_size:
            until = deadline if self.coming else self._patience.until(self._last_arrival, deadline)
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # then the next test ends the wait
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        await asyncio.sleep(0)  # let requests that arrived in this very loop tick join

    def _queued_rows(self) -> int:
        return sum(p.rows for p in self._queue)

    def _take(self) -> list[_Pending]:
        """The next batch: the queue shared evenly among the idle instances, so none waits while one works."""
        queued, idle = self._queued_rows(), self.policy.instances - self._running
        limit = self._batch_limit(-(-queued // max(1, idle)))
        batch, rows = [], 0
        while self._queue and rows + self._queue[0].rows <= limit:
            item = self._queue.popleft()
            batch.append(item)
            rows += item.rows
        return batch or [self._queue.popleft()]

    def _batch_limit(self, queued: int) -> int:
        limit = min(queued, self.policy.max_batch_size)
        fitting = [p for p in self.policy.preferred_sizes if p <= limit]
        return fitting[-1] if fitting and limit not in self.policy.preferred_sizes else limit

    async def _run(self, batch: list[_Pending]) -> None:
        self._record(batch)
        try:
            if self._cost.cheap:  # a fast model (sklearn): a thread hop and GIL hand-offs would cost more
                results, tally = self._cost.call(self._execute, batch)
            else:
                loop = asyncio.get_running_loop()
                results, tally = await loop.run_in_executor(self._executor, self._cost.call, self._execute, batch)
            self.meter.batch_elements.inc(tally.elements)  # here, on the loop's thread: the meter has no lock
            self.meter.padded_elements.inc(tally.padded)
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    _resolve(item.future, result)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
            error = self._unloaded() if self._closed or isinstance(exc, asyncio.CancelledError) else exc
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        finally:
            self._running -= 1
            self._slots.release()

    def _record(self, batch: list[_Pending]) -> None:
        meter, now = self.meter, time.monotonic()
        meter.batch_size.observe(sum(p.rows for p in batch))
        for pending in batch:
            meter.queue_wait.observe(now - pending.arrived)

    # the model call (in a batch thread or inline) -----------------------------------------------

    def _execute(self, batch: list[_Pending]) -> tuple[list[Any], _Tally]:
        """Outputs per request (or the exception that request caused), in batch order; what was padding."""
        self.batches += 1
        self.batched_rows += sum(p.rows for p in batch)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, pending in enumerate(batch):
            groups.setdefault(self.axes.stack_key(pending.feeds), []).append(index)
        results: list[Any] = [None] * len(batch)
        tally = _Tally()
        for indices in groups.values():
            for run in self._runs(indices, batch):
                answers = self._run_group([batch[i] for i in run], tally)
                for index, answer in zip(run, answers, strict=True):
                    results[index] = answer
        return results, tally

    def _runs(self, indices: list[int], batch: list[_Pending]) -> list[list[int]]:
        """One model call per run: the stackable requests together, or cut by length (``group_by_length``)."""
        if not self.policy.group_by_length or len(indices) < 2 or not self.axes.inputs:
            return [indices]
        return [[indices[i] for i in run] for run in cut_by_length([batch[i].feeds for i in indices])]

    def _run_group(self, group: list[_Pending], tally: _Tally) -> list[Any]:
        if len(group) == 1:
            return [self._call_alone(group[0], tally)]
        try:
            feeds, lengths = self._stack([p.feeds for p in group], tally)
            outputs = self.engine.run_tensors(feeds)
            return self._scatter(outputs, [p.rows for p in group], lengths)
        except Exception as exc:
            # Find who broke the batch: each request alone, so only the culprits get the error.
            answers = [self._call_alone(p, tally) for p in group]
            if self.policy.implicit and not any(isinstance(a, BaseException) for a in answers):
                self._give_up(exc)
            return answers

    def _give_up(self, exc: Exception) -> None:
        """Every request passed alone what failed stacked: this model does not batch; stop trying (once)."""
        if not self.solo:
            self.solo = True
            log.warning(
                "endpoint %s: the model refused a batch of requests that each ran alone (%s: %s); it runs them "
                "one at a time from now on. Set --aux-config max_batch_size=1 to say so, or make preprocess "
                "return rows that stack",
                self.key,
                type(exc).__name__,
                exc,
            )

    def _call_alone(self, pending: _Pending, tally: _Tally) -> Any:
        tally.elements += sum(np.size(a) for a in pending.feeds.values())
        try:
            return self.engine.run_tensors(pending.feeds)
        except Exception as exc:
            return exc

    def _stack(self, feeds_list: list[Feeds], tally: _Tally) -> tuple[Feeds, dict[int, list[int]]]:
        """One array per input along axis 0; axes declared -1 padded; the original sizes per padded axis."""
        stacked: Feeds = {}
        lengths: dict[int, list[int]] = {}
        for name in feeds_list[0]:
            arrays = [f[name] for f in feeds_list]
            ragged = False  # only -1 axes can differ (``stack_key``): most batches have none that do
            for axis in self.axes.inputs.get(name, ()):
                sizes = [a.shape[axis] for a in arrays]
                if axis < arrays[0].ndim and len(set(sizes)) > 1:
                    lengths.setdefault(axis, sizes)
                    ragged = True
            stacked[name] = np.concatenate(pad_to_largest(arrays, self.policy.pad_value) if ragged else arrays, axis=0)
            own = sum(a.size for a in arrays)
            tally.elements += stacked[name].size
            tally.padded += stacked[name].size - own
        return stacked, lengths

    def _scatter(self, outputs: list[np.ndarray], rows: list[int], lengths: dict[int, list[int]]) -> list[Any]:
        total = sum(rows)
        for out in outputs:
            if np.ndim(out) == 0 or np.shape(out)[0] != total:
                raise ValueError(f"endpoint {self.key}: the model returned {np.shape(out)} for a batch of {total}")
        cut = self.axes.outputs or ()
        results, start = [], 0
        for index, count in enumerate(rows):
            mine = [out[start : start + count] for out in outputs]
            results.append([unpad(o, cut[i] if i < len(cut) else (), lengths, index) for i, o in enumerate(mine)])
            start += count
        return results

    # stopping -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop taking requests and fail the queued ones with 503; safe from any thread."""
        self._closed = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._stop)
        self._executor.shutdown(wait=False)

    def _stop(self) -> None:
        """On the batcher's own loop: end the dispatcher and answer every waiting request."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(self._unloaded())

    def _unloaded(self) -> NotReady:
        return NotReady(f"endpoint {self.key} was unloaded while this request waited; retry", retry_after=1.0)


def _rows(feeds: Feeds, key: str) -> int:
    counts = {a.shape[0] if a.ndim else 1 for a in feeds.values()}
    if len(counts) != 1:
        raise UserCodeError(f"endpoint {key}: preprocess returned inputs with different batch sizes {counts}")
    return counts.pop()


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
