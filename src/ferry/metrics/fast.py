"""Recording at the cost of a list add: counts gather in plain Python objects and reach prometheus_client on flush.

prometheus_client takes a lock per increment, and with ``--workers N`` writes each one to a shared file;
at thousands of requests a second that is most of what metrics cost. Here the request path adds to local
counts and ``Accumulators.flush`` moves them into the prometheus_client series (at each scrape, and every
fraction of a second for the other workers). Every record and every flush happens on the event loop's
thread, so the plain additions need no lock.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any


class FastCounter:
    """A counter child's pending increments."""

    __slots__ = ("child", "pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            amount, self.pending = self.pending, 0.0
            self.child.inc(amount)


class FastHistogram:
    """A histogram child's pending observations: a count per bucket and their sum."""

    __slots__ = ("bounds", "child", "counts", "flushed", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)  # the last is +Inf: every value has a bucket
        self.counts = [0] * len(self.bounds)
        self.flushed = [0] * len(self.bounds)
        """Counts per bucket already moved to the child (for ``cumulative``, which reads no prometheus internals)."""
        self.total = 0.0

    def cumulative(self) -> list[int]:
        """Observations per bucket since this child was made (flushed or pending)."""
        return [a + b for a, b in zip(self.flushed, self.counts, strict=True)]

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bound >= amount, as prometheus' "le"
        self.total += amount

    def flush(self) -> None:
        counts, self.counts = self.counts, [0] * len(self.bounds)
        if not any(counts):
            return
        total, self.total = self.total, 0.0
        for index, (bucket, count) in enumerate(zip(self.child._buckets, counts, strict=True)):
            if count:
                bucket.inc(count)
                self.flushed[index] += count
        self.child._sum.inc(total)


class FastGauge:
    """A gauge child's last value, set on flush."""

    __slots__ = ("child", "value")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.value: float | None = None

    def set(self, value: float) -> None:
        self.value = value

    def flush(self) -> None:
        if self.value is not None:
            value, self.value = self.value, None
            self.child.set(value)


class Accumulators:
    """One fast recorder per prometheus_client child, created from any thread, flushed on the loop."""

    def __init__(self) -> None:
        self._made: dict[int, tuple[Any, FastCounter | FastHistogram | FastGauge]] = {}
        self._lock = threading.Lock()

    def counter(self, child: Any) -> FastCounter:
        return self._get(child, FastCounter)

    def histogram(self, child: Any) -> FastHistogram:
        return self._get(child, FastHistogram)

    def gauge(self, child: Any) -> FastGauge:
        return self._get(child, FastGauge)

    def _get(self, child: Any, kind: type) -> Any:
        with self._lock:
            known = self._made.get(id(child))
            if known is None or known[0] is not child:  # the child holds its id: no other object reuses it
                known = self._made[id(child)] = (child, kind(child))
            return known[1]

    def flush(self) -> None:
        """Move every pending count into prometheus_client (on the loop's thread, like every record)."""
        with self._lock:
            recorders = [recorder for _, recorder in self._made.values()]
        for recorder in recorders:
            recorder.flush()
