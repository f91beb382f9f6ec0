"""DynamicBatcher: gather concurrent requests, pad ragged axes, run the model once, scatter the rows back."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ferry.control.spec import EndpointSpec
from ferry.engines.tensor import Feeds, TensorEngine
from ferry.errors import UserCodeError
from ferry.serving.inline import INLINE_BUDGET_S, CostMeter


@dataclass(frozen=True)
class BatchPolicy:
    """How an endpoint batches, read from its aux config (ferry's keys or Triton's dynamic_batching)."""

    max_batch_size: int = 1
    max_queue_delay_s: float = 0.0
    preferred_sizes: tuple[int, ...] = ()
    pad_value: float = 0
    instances: int = 1

    @classmethod
    def from_spec(cls, spec: EndpointSpec) -> BatchPolicy:
        aux = spec.aux_config
        triton = aux.get("dynamic_batching") if isinstance(aux.get("dynamic_batching"), dict) else {}
        delay_ms = aux.get("max_queue_delay_ms")
        if delay_ms is None and "max_queue_delay_microseconds" in triton:
            delay_ms = float(triton["max_queue_delay_microseconds"]) / 1000
        preferred = aux.get("preferred_batch_size", triton.get("preferred_batch_size", []))
        preferred = preferred if isinstance(preferred, (list, tuple)) else [preferred]
        return cls(
            max_batch_size=int(aux.get("max_batch_size", 1)),
            max_queue_delay_s=float(delay_ms or 0) / 1000,
            preferred_sizes=tuple(sorted(int(p) for p in preferred)),
            pad_value=float(aux.get("pad_value", 0)),
            instances=max(1, int(aux.get("instances", aux.get("batch_instances", 1)))),
        )

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


@dataclass
class _Pending:
    feeds: Feeds
    rows: int
    arrived: float
    future: asyncio.Future = field(repr=False)


class DynamicBatcher:
    """Wraps one TensorEngine: ``await submit(feeds)`` returns that request's outputs."""

    def __init__(
        self,
        engine: TensorEngine,
        policy: BatchPolicy,
        dynamic_axes: dict[str, set[int]],
        key: str,
        inline_budget_s: float = INLINE_BUDGET_S,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.dynamic_axes = dynamic_axes
        """Per input name, the axes declared -1 (padded when requests differ); None-shaped inputs pad any axis."""
        self.key = key
        self.batches = 0
        self.batched_rows = 0
        self._queue: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._dispatcher: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(policy.instances, thread_name_prefix=f"ferry-batch-{key}")
        self._cost = CostMeter(inline_budget_s)

    async def submit(self, feeds: Feeds) -> list[np.ndarray]:
        rows = _rows(feeds, self.key)
        if rows > self.policy.max_batch_size:
            limit = self.policy.max_batch_size
            raise UserCodeError(
                f"endpoint {self.key}: preprocess returned {rows} rows, over max_batch_size {limit}", stage="preprocess"
            )
        loop = asyncio.get_running_loop()
        self._start(loop)
        pending = _Pending(feeds, rows, time.monotonic(), loop.create_future())
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._dispatcher is None or self._dispatcher.done():
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
                batch = self._take()
                asyncio.get_running_loop().create_task(self._run(batch))

    async def _gather_window(self) -> None:
        """Wait until a full batch is queued or the oldest request has waited the queue delay."""
        deadline = self._queue[0].arrived + self.policy.max_queue_delay_s
        while self._queued_rows() < self.policy.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        await asyncio.sleep(0)  # let requests that arrived in this very loop tick join

    def _queued_rows(self) -> int:
        return sum(p.rows for p in self._queue)

    def _take(self) -> list[_Pending]:
        limit = self._batch_limit(self._queued_rows())
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
        try:
            if self._cost.cheap:  # a fast model (sklearn): a thread hop and GIL hand-offs would cost more
                results = self._cost.call(self._execute, batch)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._executor, self._cost.call, self._execute, batch)
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    _resolve(item.future, result)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        finally:
            self._slots.release()

    # the model call (in a batch thread) ---------------------------------------------------------

    def _execute(self, batch: list[_Pending]) -> list[Any]:
        """Outputs per request (or the exception that request caused)."""
        self.batches += 1
        self.batched_rows += sum(p.rows for p in batch)
        if len(batch) == 1:
            return [self._call_alone(batch[0])]
        try:
            feeds, lengths = self._stack([p.feeds for p in batch])
            outputs = self.engine.run_tensors(feeds)
            return self._scatter(outputs, [p.rows for p in batch], lengths)
        except Exception:
            # Find who broke the batch: each request alone, so only the culprits get the error.
            return [self._call_alone(p) for p in batch]

    def _call_alone(self, pending: _Pending) -> Any:
        try:
            return self.engine.run_tensors(pending.feeds)
        except Exception as exc:
            return exc

    def _stack(self, feeds_list: list[Feeds]) -> tuple[Feeds, dict[int, list[int]]]:
        stacked: Feeds = {}
        lengths: dict[int, list[int]] = {}
        for name in feeds_list[0]:
            arrays = [f[name] for f in feeds_list]
            arrays, padded = self._pad(name, arrays)
            stacked[name] = np.concatenate(arrays, axis=0)
            for axis, sizes in padded.items():
                lengths.setdefault(axis, sizes)
        return stacked, lengths

    def _pad(self, name: str, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], dict[int, list[int]]]:
        """Pad every axis after the batch axis to the longest request; returns the original sizes per axis."""
        shapes = [a.shape for a in arrays]
        if len({s[1:] for s in shapes}) == 1:
            return arrays, {}
        if len({len(s) for s in shapes}) != 1:
            raise ValueError(f"input {name} has different ranks across requests")
        allowed = self.dynamic_axes.get(name)
        padded: dict[int, list[int]] = {}
        target = list(np.max(shapes, axis=0))
        for axis in range(1, len(target)):
            sizes = [s[axis] for s in shapes]
            if len(set(sizes)) > 1:
                if allowed is not None and axis not in allowed:
                    raise ValueError(f"input {name} axis {axis} differs across requests but is not declared -1")
                padded[axis] = sizes
        out = []
        for array in arrays:
            widths = [(0, 0)] + [(0, target[ax] - array.shape[ax]) for ax in range(1, array.ndim)]
            out.append(
                np.pad(array, widths, constant_values=self.policy.pad_value) if any(w for _, w in widths) else array
            )
        return out, padded

    def _scatter(self, outputs: list[np.ndarray], rows: list[int], lengths: dict[int, list[int]]) -> list[Any]:
        total = sum(rows)
        for out in outputs:
            if np.ndim(out) == 0 or np.shape(out)[0] != total:
                raise ValueError(
                    f"endpoint {self.key}: the model returned {np.shape(out)} for a batch of {total}: "
                    "its outputs do not keep the batch axis; set max_batch_size=1"
                )
        results, start = [], 0
        for index, count in enumerate(rows):
            mine = [out[start : start + count] for out in outputs]
            results.append([_unpad(o, lengths, index) for o in mine])
            start += count
        return results

    def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _unpad(output: np.ndarray, lengths: dict[int, list[int]], index: int) -> np.ndarray:
    """Slice the padded axes of an output back to this request's own length, where the output keeps them."""
    for axis, sizes in lengths.items():
        if axis < output.ndim and output.shape[axis] == max(sizes) and sizes[index] < output.shape[axis]:
            output = np.take(output, np.arange(sizes[index]), axis=axis)
    return output


def _rows(feeds: Feeds, key: str) -> int:
    counts = {a.shape[0] if a.ndim else 1 for a in feeds.values()}
    if len(counts) != 1:
        raise UserCodeError(f"endpoint {key}: preprocess returned inputs with different batch sizes {counts}")
    return counts.pop()


def _resolve(future: asyncio.Future, result: Any) -> None:
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def dynamic_axes(spec: EndpointSpec, input_names: tuple[str, ...]) -> dict[str, set[int]]:
    """Axes declared -1 per input; inputs without a declared shape may pad any axis (absent from the map)."""
    axes: dict[str, set[int]] = {}
    for index, tensor in enumerate(spec.inputs):
        name = tensor.name or (input_names[index] if index < len(input_names) else None)
        if name and tensor.shape is not None:
            axes[name] = {i for i, d in enumerate(tensor.shape) if d == -1}
    return axes
