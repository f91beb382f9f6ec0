"""DataPlane: request in, result out. Routes to a loaded runtime and runs it; no HTTP here."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import orjson

from ferry.control.metrics_config import log_freq, matching_metric_spec
from ferry.control.spec import ServiceConfig
from ferry.errors import FerryError, InvalidInput, NotFound, NotReady
from ferry.metrics import llm
from ferry.metrics.collectors import NULL_METER, Metrics
from ferry.metrics.custom import CustomStats
from ferry.serving import v2
from ferry.serving.request.drain import Retired
from ferry.serving.request.pipeline import EndpointRuntime
from ferry.serving.request.routing import RouteTable, version_order
from ferry.serving.request.shadow import ShadowSender
from ferry.serving.usercode.answers import readable

log = logging.getLogger("ferry.serving.dataplane")  # the name from before serving/ had subpackages: users' log filters

REQUEST_TIMEOUT_S = 60.0
"""A request with no answer after this long gets 504 (FERRY_REQUEST_TIMEOUT_S; aux request_timeout_ms per endpoint)."""

__all__ = ["DataPlane", "dumps"]


class DataPlane:
    """Serves requests from the current RouteTable, which the reconciler replaces in one assignment."""

    def __init__(
        self, workers: int = 32, request_timeout_s: float | None = REQUEST_TIMEOUT_S, metrics: Metrics | None = None
    ) -> None:
        self.table = RouteTable()
        self.metrics = metrics
        """None: metrics off (no /metrics, hooks always get collect_custom_statistics_fn=None)."""
        self._metered: dict[str, EndpointRuntime] = {}
        self._drops_logged: dict[str, float] = {}
        self.request_timeout_s = request_timeout_s
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ferry-stage")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loaded_once = threading.Event()
        self.shadows = ShadowSender(lambda: self.table, dumps, request_timeout_s)

    # the request path ---------------------------------------------------------------------------

    async def infer(
        self, endpoint: str, version: str | None, body: Any, routing_key: str | None = None, route: str | None = None
    ) -> Any:
        """Run ``body`` through ``endpoint[/version]``; raises FerryError kinds with status codes.
        ``routing_key`` pins a canary's choice: the same key, the same target while the canary stays the same.
        ``route``: an OpenAI route ("chat/completions", "completions"): the endpoint must be an LLM's, and its
        hooks get ClearML's envelope ``{"request": body, "route": route}``. Without it, an LLM endpoint's plain
        body gets the same envelope. The answer may be a ``Stream`` (an LLM's, asked with ``stream``)."""
        shadow = self.shadows.sample(self.table.shadows, endpoint, version, body)  # copies body before the live run
        for _ in range(RESOLVE_ATTEMPTS):
            try:
                runtime = self.table.resolve(endpoint, version, routing_key)
                payload = runtime.envelope(endpoint, body, route) if route or runtime.generates else body
            except FerryError as exc:
                self.unrouted(endpoint, exc.status_code)
                raise
            try:
                answer = await runtime.run(payload, self.pool, self.request_timeout_s)
            except Retired:
                continue  # the reconciler swapped tables after we resolved: the new table has its successor
            self.shadows.send(shadow, answer)  # fire and forget, on a later loop turn
            return answer
        raise _swapping(endpoint)

    def model(self, name: str, version: str | None = None) -> EndpointRuntime:
        """The runtime ``name[/version]`` resolves to, as for /serve (canary, unversioned, newest version).

        NotFound (404) for a name this service does not serve, NotReady (503) while it loads or failed."""
        return self.table.resolve(name, version or None)

    def versions(self, name: str) -> list[str]:
        """The loaded versions of endpoint ``name``, oldest first ("" for one added without a version)."""
        specs = [rt.spec for rt in self.table.runtimes.values() if rt.spec.name == name]
        return [s.version for s in sorted(specs, key=lambda s: version_order(s.version))]

    async def infer_tensors(
        self, name: str, version: str | None, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> tuple[EndpointRuntime, dict[str, np.ndarray]]:
        """Run only ``name[/version]``'s model on named arrays (the V2 protocol: no preprocess/postprocess).

        Counted in the endpoint's metrics like any request. InputMismatch (422) for unknown or missing
        inputs, a wrong datatype or shape, or an unknown output; InvalidInput (400) for custom engines."""
        for _ in range(RESOLVE_ATTEMPTS):
            try:
                runtime = self.model(name, version)
            except FerryError as exc:
                self.unrouted(name, exc.status_code)
                raise
            try:
                prepare = partial(v2.feeds, runtime, inputs, outputs)
                arrays = await runtime.run_tensors(prepare, self.pool, self.request_timeout_s)
            except Retired:
                continue
            return runtime, v2.named_outputs(runtime, arrays, outputs)
        raise _swapping(name)

    def ready(self) -> bool:
        """True once the first revision has been loaded (failed versions do not block readiness)."""
        return self.loaded_once.is_set()

    def swap(self, table: RouteTable) -> RouteTable:
        """Install ``table`` atomically; returns the table it replaced."""
        old, self.table = self.table, table
        if not table.loading:
            self.loaded_once.set()
        return old

    # send_request: endpoint-to-endpoint calls from user code ------------------------------------

    def send_request_sync(self, endpoint: str, version: str | None = None, data: Any = None) -> Any:
        """Blocking call to another endpoint; safe from any thread; the JSON answer, or None on failure."""
        try:
            name, version, route = _call_target(endpoint, version, data)
            loop = None if _on_event_loop() else self.loop  # on the loop itself nothing may wait for the loop
            for _ in range(RESOLVE_ATTEMPTS):
                try:
                    runtime = self.table.resolve(name, version)
                    payload = runtime.envelope(name, data, route) if route else data
                    answer = _as_json(self._blocking(runtime, payload, loop))
                    return readable(answer) if route else answer
                except Retired:
                    continue
            raise _swapping(name)
        except Exception as exc:  # the contract: a failed call returns None
            log.warning("send_request to %s failed: %s", endpoint, exc)
            return None

    @staticmethod
    def _blocking(runtime: EndpointRuntime, data: Any, loop: asyncio.AbstractEventLoop | None) -> Any:
        if loop is None and not runtime.all_sync:
            log.warning("send_request(%r) was called on the event loop; the caller now runs in a thread", runtime.key)
        return runtime.run_blocking(data, loop)

    async def send_request_async(self, endpoint: str, version: str | None = None, data: Any = None) -> Any:
        """Awaitable call to another endpoint (custom_async); the JSON answer, or None on failure."""
        try:
            name, version, route = _call_target(endpoint, version, data)
            answer = _as_json(await self.infer(name, version, data, route=route))
            return readable(answer) if route else answer
        except Exception as exc:
            log.warning("send_request to %s failed: %s", endpoint, exc)
            return None

    def send_request_for(self, engine: str) -> Callable[..., Any]:
        """The send_request a Preprocess of ``engine`` gets: awaitable under custom_async."""
        return self.send_request_async if engine == "custom_async" else self.send_request_sync

    # metrics ------------------------------------------------------------------------------------

    def unrouted(self, endpoint: str, code: int) -> None:
        """A request refused before it reached a version: counted under its endpoint when that exists."""
        if self.metrics is not None:
            known = endpoint if self.table.knows(endpoint) else ""
            self.metrics.requests.labels(known, "", str(code)).inc()

    def instrument(self, runtime: EndpointRuntime, config: ServiceConfig) -> None:
        """Give ``runtime`` its Prometheus series (once) and the custom statistics ``config`` asks of it."""
        if self.metrics is None:
            return
        spec = runtime.spec
        if runtime.meter is NULL_METER:
            batching = runtime.batcher is not None
            runtime.attach(self.metrics.endpoint(spec.name, spec.version, batching=batching, stages=runtime.stages))
            if runtime.generates:
                llm.attach(runtime.engine, self.metrics.llm.meter(spec.name, spec.version))
        metric_spec = matching_metric_spec(config, runtime.key)
        if metric_spec is None:
            runtime.custom = None
            return
        freq, custom = log_freq(config, metric_spec), runtime.custom
        if custom is not None and custom.spec == metric_spec and custom.log_freq == freq:
            return
        try:
            runtime.custom = CustomStats(metric_spec, freq, self.metrics.custom, runtime.meter.labels)
        except ValueError as exc:  # a config prometheus_client refuses: the endpoint serves on without it
            runtime.custom = None
            log.error("endpoint %s: custom statistics of %s not recorded: %s", runtime.key, metric_spec.endpoint, exc)

    def refresh_metrics(self) -> None:
        """Flush what requests recorded, set the gauges read now (in-flight, revision), warn of dropped values.

        On the event loop's thread, like every record (the /metrics route and the reconciler call it)."""
        if self.metrics is None:
            return
        table = self.table
        for key, runtime in self._metered.items():
            if table.runtimes.get(key) is not runtime:
                runtime.meter.in_flight.set(0)  # retired: its series stays, at rest
        self._metered = dict(table.runtimes)
        for runtime in self._metered.values():
            runtime.meter.in_flight.set(runtime.inflight)
            if runtime.generates:
                llm.refresh(runtime.engine)
            self._report_drops(runtime)
        self.metrics.revision.set(table.revision)
        self.metrics.flush()

    def _report_drops(self, runtime: EndpointRuntime) -> None:
        """At most one warning a minute per endpoint: a stream of bad values must not flood the log."""
        if (
            runtime.custom is None
            or time.monotonic() - self._drops_logged.get(runtime.key, -DROPS_EVERY_S) < DROPS_EVERY_S
        ):
            return
        drops = runtime.custom.drops()
        if drops:
            self._drops_logged[runtime.key] = time.monotonic()
        for name, (count, reason) in drops.items():
            log.warning("endpoint %s: dropped %s value(s) of custom statistic %s: %s", runtime.key, count, name, reason)

    # state for heartbeats -----------------------------------------------------------------------

    def endpoint_states(self) -> dict[str, dict[str, Any]]:
        table = self.table
        states: dict[str, dict[str, Any]] = {
            key: {"state": "ready", "requests": rt.requests, "errors": rt.errors, "inflight": rt.inflight}
            for key, rt in table.runtimes.items()
        }
        states.update({key: {"state": "failed", "error": err} for key, err in table.failed.items()})
        states.update({key: {"state": "loading"} for key in table.loading if key not in states})
        return states

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.shadows.close()


RESOLVE_ATTEMPTS = 3
DROPS_EVERY_S = 60.0


def _swapping(endpoint: str) -> NotReady:
    return NotReady(f"endpoint {endpoint} is being replaced; retry shortly", retry_after=1.0)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _target(endpoint: str, version: str | None) -> tuple[str, str | None]:
    name = endpoint.strip("/")
    if version is None and "/" in name:
        name, version = name.split("/", 1)
    return name, (str(version) if version not in (None, "") else None)


OPENAI_CALLS = {"chat/completions": "chat/completions", "completions": "completions"}
"""send_request's endpoint names for the OpenAI routes (also with ``v1/`` or ``openai/v1/`` before them): the
endpoint is then the ``model`` of ``data``, as ClearML's vllm readme calls it."""


def _call_target(endpoint: str, version: str | None, data: Any) -> tuple[str, str | None, str | None]:
    """(name, version, OpenAI route or None) of a send_request call."""
    path = endpoint.strip("/").removeprefix("openai/").removeprefix("v1/")
    route = OPENAI_CALLS.get(path)
    if route is None:
        return (*_target(endpoint, version), None)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, str) or not model.strip():
        raise NotFound(f"send_request to {endpoint} needs data['model']: the LLM endpoint to ask")
    if data.get("stream"):
        raise InvalidInput(f"send_request to {endpoint} returns whole answers: leave out stream (or set it false)")
    return (*_target(model, None), route)


def _as_json(value: Any) -> Any:
    """What an HTTP caller would have got: numpy arrays become lists, and so on."""
    return orjson.loads(dumps(value))


def _fallback(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot serialise {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """JSON bytes of a postprocess result (numpy arrays and scalars included)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_fallback)
