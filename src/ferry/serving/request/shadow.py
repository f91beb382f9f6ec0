"""Shadow traffic: a sampled copy of a request goes to the shadow target after the live answer, counted apart."""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from ferry.control.spec import ShadowSpec
from ferry.errors import NotReady
from ferry.serving.request.drain import Retired
from ferry.serving.request.routing import RouteTable
from ferry.streams import Stream

log = logging.getLogger("ferry.serving.shadow")  # the name from before serving/ had subpackages: users' log filters

MAX_INFLIGHT = 8
"""Shadow requests one shadow may have running; a sampled request beyond that is dropped (and counted)."""
THREADS = 16
"""Threads for the shadows' costly sync stages (cheap ones run on the loop, as for live requests): shadow code
never takes a thread of the live stage pool."""
LATENCY_WINDOW = 1024
"""Latencies kept per shadow for its percentiles."""


@dataclass
class ShadowStats:
    """What one shadow did since its spec last changed; updated on the event loop, read by heartbeats."""

    target: str
    fraction: float
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    answered: int = 0
    compared: int = 0
    """Answers compared with the live one (a streamed live answer went to its client: nothing to compare)."""
    agreed: int = 0
    inflight: int = 0
    last_error: str | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def report(self) -> dict[str, Any]:
        """The JSON-ready counts `ferry status --json` shows under the instance's ``shadows``."""
        times = sorted(self.latencies)
        return {
            "target": self.target,
            "fraction": self.fraction,
            "sent": self.sent,
            "dropped": self.dropped,
            "errors": self.errors,
            "answered": self.answered,
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement": round(self.agreed / self.compared, 4) if self.compared else None,
            "inflight": self.inflight,
            "latency_ms": {"p50": _ms(times, 0.5), "p99": _ms(times, 0.99), "max": _ms(times, 1.0)},
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class Sampled:
    """A live request picked for its shadow: the spec, its stats and a copy of the body taken before the live run."""

    spec: ShadowSpec
    stats: ShadowStats
    body: Any


class ShadowSender:
    """Samples live requests for their endpoint's shadow and sends each copy after the live answer, fire and forget."""

    def __init__(
        self,
        table: Callable[[], RouteTable],
        encode: Callable[[Any], bytes],
        timeout_s: float | None = None,
        max_inflight: int = MAX_INFLIGHT,
        rng: random.Random | None = None,
    ) -> None:
        self.table = table
        self.encode = encode
        self.timeout_s = timeout_s
        self.max_inflight = max_inflight
        self.rng = rng or random.Random()
        self.stats: dict[str, ShadowStats] = {}
        self.pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="ferry-shadow")
        self._tasks: set[asyncio.Task[None]] = set()

    def sample(
        self, shadows: Mapping[str, ShadowSpec], endpoint: str, version: str | None, body: Any
    ) -> Sampled | None:
        """Before the live run: pick this request for a shadow (or not) and copy its body if picked."""
        if not shadows:
            return None
        spec = shadows.get(f"{endpoint}/{version}") if version else None
        spec = spec or shadows.get(endpoint)  # a shadow of a name covers all its versions
        if spec is None or self.rng.random() >= spec.fraction:
            return None
        stats = self._stats(spec)
        if stats.inflight >= self.max_inflight:
            stats.dropped += 1
            return None
        return Sampled(spec, stats, _copy(body))

    def send(self, sampled: Sampled | None, answer: Any) -> None:
        """After the live answer: run the shadow on a later loop turn, so the live answer is written first."""
        if sampled is None:
            return
        if sampled.stats.inflight >= self.max_inflight:
            sampled.stats.dropped += 1
            return
        sampled.stats.inflight += 1
        sampled.stats.sent += 1
        task = asyncio.get_running_loop().create_task(self._shadow(sampled, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def states(self, shadows: Mapping[str, ShadowSpec]) -> dict[str, dict[str, Any]]:
        """Counts per shadowed endpoint for the heartbeat (read from its thread: looks, never creates)."""
        return {name: self._stats(spec, keep=False).report() for name, spec in shadows.items()}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _shadow(self, sampled: Sampled, live: Any) -> None:
        stats = sampled.stats
        started = time.perf_counter()
        try:
            try:
                answer = await self._run_target(sampled.spec.target, sampled.body)
                if type(answer) is Stream:  # an LLM's streamed answer: read to its end, which frees its version
                    answer = [chunk async for chunk in answer]
            finally:  # failures count their latency too: a timing-out shadow shows as slow
                stats.latencies.append(time.perf_counter() - started)
            compared = type(live) is not Stream
            same = compared and self.encode(_comparable(answer)) == self.encode(_comparable(live))
        except Exception as exc:
            stats.errors += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
            log.debug("shadow of %s to %s failed: %s", sampled.spec.endpoint, sampled.spec.target, stats.last_error)
        else:
            stats.answered += 1
            stats.compared += compared
            stats.agreed += same
        finally:
            stats.inflight -= 1

    async def _run_target(self, target: str, body: Any) -> Any:
        """Like a live request to ``target``, but costly sync stages run in the shadow threads, never the live pool."""
        name, _, version = target.partition("/")
        for _ in range(3):
            runtime = self.table().resolve(name, version or None)
            payload = runtime.envelope(name, body, None) if runtime.generates else body
            try:
                return await runtime.run(payload, self.pool, self.timeout_s)
            except Retired:
                continue  # swapped under us: the next table has the successor
        raise NotReady(f"shadow target {target} kept being replaced", retry_after=1.0)

    def _stats(self, spec: ShadowSpec, keep: bool = True) -> ShadowStats:
        stats = self.stats.get(spec.endpoint)
        if stats is None or (stats.target, stats.fraction) != (spec.target, spec.fraction):
            stats = ShadowStats(spec.target, spec.fraction)  # a changed shadow counts anew
            if keep:
                self.stats[spec.endpoint] = stats
        return stats


def _comparable(answer: Any) -> Any:
    """What two answers must share to agree: an OpenAI answer's choices' texts (its id and time always differ)."""
    if isinstance(answer, dict) and answer.get("object") in ("chat.completion", "text_completion"):
        choices = answer.get("choices") or []
        return [c.get("text", (c.get("message") or {}).get("content")) for c in choices if isinstance(c, dict)]
    return answer


def _copy(body: Any) -> Any:
    """The body as the live request received it: the live preprocess may change it in place."""
    if isinstance(body, (bytes, str, int, float, bool)) or body is None:
        return body
    try:
        return orjson.loads(orjson.dumps(body))
    except TypeError:
        return copy.deepcopy(body)


def _ms(times: list[float], q: float) -> float | None:
    if not times:
        return None
    return round(times[min(len(times) - 1, int(q * len(times)))] * 1000, 2)
