"""Built-in Prometheus metrics of one serving process, on an explicit CollectorRegistry (multiprocess-aware)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from ferry.metrics import MULTIPROC_ENV
from ferry.metrics.custom import CustomFamilies
from ferry.metrics.fast import Accumulators
from ferry.metrics.llm import LLMFamilies
from ferry.metrics.process import ProcessStats

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LABELS = ("endpoint", "version")

disable_created_metrics()  # a *_created series per counter doubles every scrape for nothing dashboards use


class Metrics:
    """The built-in metric families of a serving process and the custom ones its metric configs declare."""

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ferry_requests", "Requests answered, by HTTP status code", (*LABELS, "code"), registry=r
        )
        self.latency = Histogram(
            "ferry_request_duration_seconds", "End-to-end latency", LABELS, buckets=LATENCY_BUCKETS, registry=r
        )
        self.stages = Histogram(
            "ferry_stage_duration_seconds",
            "Time in one stage: preprocess, model (batch queue wait included) or postprocess",
            (*LABELS, "stage"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "ferry_in_flight_requests", "Requests running or waiting", LABELS, registry=r, multiprocess_mode="livesum"
        )
        self.batch_size = Histogram(
            "ferry_batch_size", "Rows per batched model call", LABELS, buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "ferry_batch_queue_wait_seconds",
            "Time a request waited in the batcher's queue",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_elements = Counter(
            "ferry_batch_elements", "Input elements given to batched model calls, padding included", LABELS, registry=r
        )
        self.padded_elements = Counter(
            "ferry_batch_padded_elements",
            "Input elements of batched model calls that were padding (ragged requests padded to the longest)",
            LABELS,
            registry=r,
        )
        self.overloaded = Counter(
            "ferry_overloaded_requests", "Requests refused with 503: max_queue_size were waiting", LABELS, registry=r
        )
        self.timed_out = Counter(
            "ferry_timed_out_requests", "Requests answered 504 (request timeout)", LABELS, registry=r
        )
        self.load_seconds = Gauge(
            "ferry_model_load_seconds",
            "Seconds the last load of this version took",
            LABELS,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.load_failures = Counter("ferry_model_load_failures", "Failed loads", LABELS, registry=r)
        self.revision = Gauge(
            "ferry_loaded_revision", "The service revision this process serves", registry=r, multiprocess_mode="liveall"
        )
        self.fast = Accumulators()
        """Where the request path records (on the event loop); ``flush`` moves it into the series above."""
        self.custom = CustomFamilies(r, self.fast)
        self.llm = LLMFamilies(r)
        self.process = ProcessStats(self.multiprocess_dir)
        if self.multiprocess_dir is None:
            r.register(self.process)

    def endpoint(self, name: str, version: str, *, batching: bool, stages: tuple[str, ...]) -> EndpointMeter:
        """The meter of one endpoint version: its series exist (at 0) from now on."""
        return EndpointMeter(self, name, version, batching=batching, stages=stages)

    def loaded(self, name: str, version: str, seconds: float) -> None:
        self.load_seconds.labels(name, version).set(seconds)
        self.load_failures.labels(name, version)  # at 0 from the first load on: rate() has data

    def load_failed(self, name: str, version: str) -> None:
        self.load_failures.labels(name, version).inc()

    def flush(self) -> None:
        """Make what the request path recorded visible to scrapes; call it on the event loop's thread."""
        self.fast.flush()

    def render(self) -> tuple[bytes, str]:
        """The scrape: this process's values, or with --workers N every worker's, and the content type."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, self.multiprocess_dir)
        registry.register(self.process)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """This process stops serving: its live gauges leave the other workers' scrapes."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self.multiprocess_dir)


class _Nothing:
    """A metric child that records nothing: a stage the endpoint does not have, or metrics turned off."""

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def set(self, value: float) -> None:
        pass


NOTHING = _Nothing()


class EndpointMeter:
    """One endpoint version's series, resolved once at load.

    The request path (``request``, the stages, the batch) records on the event loop's thread, into fast
    recorders; ``overloaded`` and ``timed_out`` are rare and thread-safe.
    """

    def __init__(
        self, metrics: Metrics, name: str, version: str, *, batching: bool, stages: tuple[str, ...] = ()
    ) -> None:
        self.labels = (name, version)
        self._metrics = metrics
        fast = metrics.fast
        self._codes = {200: fast.counter(metrics.requests.labels(name, version, "200"))}
        self.latency = fast.histogram(metrics.latency.labels(name, version))
        timed = {stage: fast.histogram(metrics.stages.labels(name, version, stage)) for stage in stages}
        self.preprocess = timed.get("preprocess", NOTHING)
        self.model = timed.get("model", NOTHING)
        self.postprocess = timed.get("postprocess", NOTHING)
        self.in_flight = metrics.in_flight.labels(name, version)
        self.overloaded = metrics.overloaded.labels(name, version)
        self.timed_out = metrics.timed_out.labels(name, version)
        self.batch_size = fast.histogram(metrics.batch_size.labels(name, version)) if batching else NOTHING
        self.queue_wait = fast.histogram(metrics.queue_wait.labels(name, version)) if batching else NOTHING
        self.batch_elements = fast.counter(metrics.batch_elements.labels(name, version)) if batching else NOTHING
        self.padded_elements = fast.counter(metrics.padded_elements.labels(name, version)) if batching else NOTHING

    def request(self, code: int, seconds: float) -> None:
        """One answered request: its status code and its end-to-end time."""
        counter = self._codes.get(code)
        if counter is None:
            metrics = self._metrics
            counter = self._codes[code] = metrics.fast.counter(metrics.requests.labels(*self.labels, str(code)))
        counter.inc()
        self.latency.observe(seconds)


class NullMeter:
    """The meter of a version with metrics off (and during warmup): every record is a no-op."""

    labels = ("", "")
    latency = preprocess = model = postprocess = in_flight = overloaded = timed_out = NOTHING
    batch_size = queue_wait = batch_elements = padded_elements = NOTHING

    def request(self, code: int, seconds: float) -> None:
        pass


NULL_METER = NullMeter()
