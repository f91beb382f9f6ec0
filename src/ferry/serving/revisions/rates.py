"""Requests, errors and latency of each endpoint version: now (the last heartbeat interval) and a 15-minute history.

The heartbeat carries counts since each version loaded; a reader of the store (``ferry status``, the console) sees
one heartbeat at a time, so the instance works out the rates itself: ``requests_per_s`` and ``errors_per_s`` over
its last heartbeat interval, and ``series``, a ring of samples taken every ``sample_s`` (by default five heartbeat
intervals, 10 s) of requests/s, errors/s and the latency's p50 and p99 (from the bucket counts of the endpoint's
latency histogram; none when metrics are off) for the console's charts: no history table in the store.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

HISTORY_S = 15 * 60.0
"""How far back the series reach."""

MAX_SAMPLES = 90
"""At most this many samples an endpoint (the heartbeat's size with 50 endpoints stays ~100 KB)."""


class Rates:
    """Adds ``requests_per_s``, ``errors_per_s`` and ``series`` to endpoint states that count requests."""

    def __init__(self, sample_s: float = 10.0) -> None:
        self.sample_s = sample_s
        samples = max(2, min(MAX_SAMPLES, int(HISTORY_S / sample_s)))
        self._last: dict[str, tuple[float, int, int]] = {}
        self._base: dict[str, tuple[float, int, int, list[int]]] = {}
        self._series: dict[str, deque[list[float | None]]] = {}
        self._samples = samples

    def add(
        self,
        states: dict[str, dict[str, Any]],
        latency: dict[str, list[int]] | None = None,
        bounds: list[float] | None = None,
        now: float | None = None,
        wall: float | None = None,
    ) -> dict[str, dict[str, Any]]:
        """``states`` (endpoint -> state with ``requests`` and ``errors``), each given its rates since the last call
        (none on its first) and its series; ``latency``: endpoint -> observations per bucket of ``bounds`` (seconds,
        the last +Inf) since it loaded. A version replaced meanwhile (counts going down) starts again."""
        now = time.monotonic() if now is None else now
        wall = time.time() if wall is None else wall
        seen: dict[str, tuple[float, int, int]] = {}
        for key, state in states.items():
            if "requests" not in state:
                continue
            requests, errors = int(state["requests"]), int(state.get("errors") or 0)
            last = self._last.get(key)
            if last is not None and now > last[0] and requests >= last[1] and errors >= last[2]:
                seconds = now - last[0]
                state["requests_per_s"] = round((requests - last[1]) / seconds, 2)
                state["errors_per_s"] = round((errors - last[2]) / seconds, 2)
            seen[key] = (now, requests, errors)
            self._sample(key, requests, errors, (latency or {}).get(key), bounds or [], now, wall)
            if self._series.get(key):
                state["series"] = list(self._series[key])
        self._last = seen
        for gone in [key for key in self._series if key not in seen]:
            del self._series[gone], self._base[gone]
        return states

    def _sample(
        self,
        key: str,
        requests: int,
        errors: int,
        buckets: list[int] | None,
        bounds: list[float],
        now: float,
        wall: float,
    ) -> None:
        buckets = list(buckets or [])
        base = self._base.get(key)
        if base is None or requests < base[1] or errors < base[2]:  # first seen, or a new version: start again
            self._base[key] = (now, requests, errors, buckets)
            self._series[key] = deque(maxlen=self._samples)
            return
        seconds = now - base[0]
        if seconds < self.sample_s:
            return
        deltas = [b - a for a, b in zip(base[3], buckets, strict=False)] if len(base[3]) == len(buckets) else []
        self._series[key].append(
            [
                round(wall),
                round((requests - base[1]) / seconds, 2),
                round((errors - base[2]) / seconds, 2),
                percentile(deltas, bounds, 0.5),
                percentile(deltas, bounds, 0.99),
            ]
        )
        self._base[key] = (now, requests, errors, buckets)


def percentile(counts: list[int], bounds: list[float], q: float) -> float | None:
    """The ``q`` quantile in milliseconds as the upper bound of the bucket it falls in (the last finite bound for
    the +Inf bucket); None without observations."""
    total = sum(counts)
    if total <= 0 or not bounds:
        return None
    finite = [b for b in bounds if b != float("inf")]
    seen = 0
    for count, bound in zip(counts, bounds, strict=False):
        seen += count
        if seen >= q * total:
            return round(1000 * (bound if bound != float("inf") else finite[-1]), 2)
    return round(1000 * finite[-1], 2)
