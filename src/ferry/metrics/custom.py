"""Custom statistics: what user code passes to collect_custom_statistics_fn, recorded per its metric config."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ferry.control.spec import MetricSpec, MetricVariable
from ferry.metrics.fast import Accumulators

PREFIX = "ferry_custom_"
OTHER = "other"
"""The enum value an unlisted value is counted under."""
LABELS = ("endpoint", "version")
Record = Callable[[Any], None]


def metric_name(variable: str) -> str:
    """The Prometheus name of a custom variable (``_total`` is added to counters by prometheus_client)."""
    return PREFIX + variable


class CustomFamilies:
    """One metric object per custom variable name; a variable redefined (other kind or buckets) is replaced."""

    def __init__(self, registry: CollectorRegistry, fast: Accumulators) -> None:
        self.registry = registry
        self.fast = fast
        self._families: dict[str, tuple[MetricVariable, Any]] = {}
        self._lock = threading.Lock()

    def family(self, name: str, variable: MetricVariable) -> Any:
        with self._lock:
            known = self._families.get(name)
            if known is not None and _same_shape(known[0], variable):
                return known[1]
            if known is not None:
                self.registry.unregister(known[1])
            family = _new_family(name, variable, self.registry)
            self._families[name] = (variable, family)
            return family


def _same_shape(a: MetricVariable, b: MetricVariable) -> bool:
    return a.kind == b.kind and a.buckets == b.buckets


def _new_family(name: str, variable: MetricVariable, registry: CollectorRegistry) -> Any:
    what = f"custom statistic {name} ({variable.kind})"
    if variable.kind == "scalar":
        return Histogram(metric_name(name), what, LABELS, buckets=variable.buckets, registry=registry)
    if variable.kind == "enum":
        return Counter(metric_name(name), what, (*LABELS, "value"), registry=registry)
    if variable.kind == "value":
        return Gauge(metric_name(name), what, LABELS, registry=registry, multiprocess_mode="livemostrecent")
    return Counter(metric_name(name), what, LABELS, registry=registry)


class CustomStats:
    """One endpoint version's custom statistics: the sampling decision and the recording of values.

    A sampled request's hooks get the ``append`` of a fresh list as collect_custom_statistics_fn (cheap and
    safe from any thread); ``record`` reads that list on the event loop once the request ends. Recording
    is an add in memory (no I/O on the request path); a value of the wrong type is dropped and counted,
    and ``drops`` reports it later from a background task.
    """

    def __init__(self, spec: MetricSpec, log_freq: float, families: CustomFamilies, labels: tuple[str, str]) -> None:
        self.spec = spec
        self.log_freq = log_freq
        self._record: dict[str, Record] = {
            name: _recorder(variable, families.family(name, variable), families.fast, labels)
            for name, variable in spec.variables.items()
        }
        self._dropped: dict[str, tuple[int, str]] = {}

    def sample(self) -> list[Any] | None:
        """A list to collect one request's values in when the request is sampled, else None."""
        if self.log_freq >= 1.0 or (self.log_freq > 0.0 and random.random() < self.log_freq):
            return []
        return None

    def record(self, collected: list[Any]) -> None:
        """What one request's hooks passed to collect_custom_statistics_fn, in order (on the event loop)."""
        for values in collected:
            self.collect(values)

    def collect(self, values: Any) -> None:
        """Record the configured variables of ``values``; others are ignored, wrong types dropped."""
        if not isinstance(values, dict):
            self._drop("(all)", f"collect_custom_statistics_fn takes a dict, got {type(values).__name__}")
            return
        for name, value in values.items():
            record = self._record.get(name)
            if record is None:
                continue
            try:
                record(value)
            except (TypeError, ValueError) as exc:
                self._drop(name, str(exc))

    def _drop(self, name: str, reason: str) -> None:
        count, _ = self._dropped.get(name, (0, ""))
        self._dropped[name] = (count + 1, reason)

    def drops(self) -> dict[str, tuple[int, str]]:
        """Values dropped since the last call, per variable: (count, the last reason); resets the counts."""
        dropped, self._dropped = self._dropped, {}
        return dropped


def _number(value: Any) -> float:
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"{value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _recorder(variable: MetricVariable, family: Any, fast: Accumulators, labels: tuple[str, str]) -> Record:
    if variable.kind == "scalar":
        observe = fast.histogram(family.labels(*labels)).observe
        return lambda value: observe(_number(value))
    if variable.kind == "enum":
        counters = {value: fast.counter(family.labels(*labels, value)) for value in (*variable.values, OTHER)}
        other = counters[OTHER]
        return lambda value: counters.get(str(value), other).inc()
    if variable.kind == "value":
        gauge = fast.gauge(family.labels(*labels)).set
        return lambda value: gauge(_number(value))
    inc = fast.counter(family.labels(*labels)).inc
    return lambda value: _count(inc, value)


def _count(inc: Callable[[float], None], value: Any) -> None:
    amount = _number(value)
    if amount < 0:
        raise ValueError(f"{value!r}: a counter only goes up")
    inc(amount)
