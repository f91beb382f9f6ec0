"""Reconciler: poll the store's revision -> build and warm new runtimes -> swap -> drain -> unload."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from ferry.control.autoupdate import reconcile_service
from ferry.control.store import Store
from ferry.errors import FerryError
from ferry.metrics.fast import FastHistogram
from ferry.metrics.targets import targets
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry
from ferry.serving.request.dataplane import DataPlane
from ferry.serving.revisions.daemon_threads import in_daemon_thread, retrieve
from ferry.serving.revisions.rates import Rates
from ferry.serving.revisions.swap import RevisionSwap

log = logging.getLogger("ferry.serving.reconciler")  # the name from before serving/ had subpackages: users' log filters

RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0
"""Endpoints that failed to load are retried after 5 s, then 10, 20, ... up to every 5 minutes."""
CONNECT_FIRST_S = 1.0
CONNECT_MAX_S = 30.0
"""A store unreachable at start is retried after 1 s, then 2, 4, ... up to every 30 s."""
RULES_EVERY = 10
"""Auto-update rules are reconciled every this many poll intervals (a writer may have crashed mid-way)."""
METRICS_EVERY_S = 0.5
"""How often a serving process moves what it recorded into its series: with --workers N, how stale the
other workers' part of a scrape can be."""
STOP_GRACE_S = 0.5
"""On ``stop``, a blocking step in progress (a load, a call to the store) gets this long to end; then it is left."""
STOP_DRAIN_S = 0.5
"""On ``stop``, requests still running in the loaded versions get this long before the versions unload (the
HTTP server has drained its own requests first)."""
SHUTDOWN_S = 1.0
"""On ``stop``, deregistering and unloading get this long; what is still running then is left to the process's exit."""


class Stopping(BaseException):
    """``stop`` came while a blocking step ran: the step is left to finish in its thread, unwaited for."""


@dataclasses.dataclass
class Backoff:
    """Delays that start at ``first`` seconds and double up to ``most``; ``reset`` starts over."""

    first: float
    most: float
    current: float = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.current = self.first

    def next(self) -> float:
        delay, self.current = self.current, min(self.current * 2, self.most)
        return delay

    def reset(self) -> None:
        self.current = self.first


class RecentLog(logging.Handler):
    """Keeps ferry's last warnings and errors, and the "revision N live" lines, for the heartbeat (bounded)."""

    LINE_CHARS = 300
    """Each line is cut to this many characters; a message's later lines (a traceback) are dropped."""

    def __init__(self, size: int = 20) -> None:
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno < logging.WARNING and not _kept_info(message):
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(record.created))
        line = f"{stamp} {record.levelname} {message.splitlines()[0] if message else ''}"
        self.lines.append(line if len(line) <= self.LINE_CHARS else line[: self.LINE_CHARS - 1] + "…")

    def snapshot(self) -> list[str]:
        """The kept lines, oldest first (taken under the handler's lock: other threads log meanwhile)."""
        with self.lock or contextlib.nullcontext():
            return list(self.lines)


def _kept_info(message: str) -> bool:
    """INFO lines worth showing next to the warnings: a revision going live, the store coming back."""
    return message.startswith("store reachable again") or (message.startswith("revision ") and " live: " in message)


class Reconciler:
    """Keeps one instance's RouteTable equal to its service's newest revision (through its ``swap``), and
    heartbeats. ``swap_cls`` makes the swap (the Ray ingress's builds runtimes that call model deployments)."""

    swap_cls: type[RevisionSwap] = RevisionSwap

    def __init__(
        self,
        plane: DataPlane,
        store: Store,
        registry: ModelRegistry,
        artifacts: ArtifactStore,
        service_id: str,
        poll_interval: float = 1.0,
        heartbeat_interval: float = 2.0,
        retry: Backoff | None = None,
        connect_retry: Backoff | None = None,
    ) -> None:
        self.plane = plane
        self.store = store
        self.registry = registry
        self.service_id = service_id
        self.swap = self.swap_cls(plane, store, registry, artifacts, service_id)
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.retry = retry or Backoff(RETRY_FIRST_S, RETRY_MAX_S)
        self.connect_retry = connect_retry or Backoff(CONNECT_FIRST_S, CONNECT_MAX_S)
        self.instance_id: str | None = None
        self.loading_revision: int | None = None
        self.store_error: str | None = None
        """What is wrong with the store while it fails ("store unreachable: ..."), for /health/ready."""
        self.recent = RecentLog()
        self._stop = asyncio.Event()
        self._retry_at = 0.0
        self._beat_failing = False
        self._process: Any = None
        self._rates = Rates(sample_s=max(1.0, 5 * heartbeat_interval))

    async def run(self) -> None:
        """Register, then poll and heartbeat until ``stop``; blocking steps run in threads so requests flow.

        ``stop`` ends it within ``STOP_GRACE_S``, whatever it waits on: a load or a call to the store still in
        progress then is left to finish in its thread (daemon: the process exits without it); then it
        deregisters and unloads, within ``SHUTDOWN_S``.
        """
        logging.getLogger("ferry").addHandler(self.recent)
        try:
            if await self._register():
                beats = asyncio.create_task(self._heartbeats(), name="ferry heartbeats")
                rules = asyncio.create_task(self._rule_checks(), name="ferry auto-update rules")
                flushes = asyncio.create_task(self._metric_flushes(), name="ferry metrics")
                try:
                    await self._poll()
                finally:
                    self.stop()
                    await beats
                    await rules
                    await flushes
        finally:
            logging.getLogger("ferry").removeHandler(self.recent)
            shutdown = in_daemon_thread(asyncio.get_running_loop(), self._shutdown)
            try:
                await asyncio.wait_for(asyncio.shield(shutdown), SHUTDOWN_S)
            except asyncio.TimeoutError:
                log.warning("deregistering and unloading took over %g s: left to finish as the process exits",
                            SHUTDOWN_S)  # fmt: skip
            self.plane.loaded_once.set()  # no load comes any more: wake whoever waits for the first one

    def stop(self) -> None:
        self._stop.set()

    def health(self) -> tuple[str, str | None]:
        """("ready", None), or why this instance takes no traffic yet: ("loading" or "unavailable", reason)."""
        if self._stop.is_set():
            return "unavailable", "stopping"
        if self.plane.ready():
            return "ready", None
        if self.store_error is not None:
            return "unavailable", self.store_error
        if self.loading_revision is None:
            return "loading", "reading the service's revision from the store"
        loading = sorted(self.plane.table.loading)
        return "loading", f"loading revision {self.loading_revision}" + (f": {', '.join(loading)}" if loading else "")

    async def _register(self) -> bool:
        """Register this instance, retrying with backoff while the store is unreachable; False if stopped."""
        while not self._stop.is_set():
            try:
                # The service as given (an id, a prefix, or "" for the only one), resolved once the store answers.
                self.service_id = (await self._blocking(self.store.resolve_service, self.service_id or None)).id
                self.instance_id = await self._blocking(
                    self.store.register_instance, self.service_id, socket.gethostname(), os.getpid()
                )
                self._store_up()
                return True
            except Stopping:
                return False
            except Exception as exc:
                self.store_error = _store_problem(exc)
                delay = self.connect_retry.next()
                log.warning("%s; retrying in %.0f s", self.store_error, delay)
                await self._sleep(delay)
        return False

    async def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                await self._tick()
            except Stopping:
                return
            await self._sleep(self.poll_interval)

    async def _rule_checks(self) -> None:
        """Reconcile the service's auto-update rules now and then, in a thread; a failure is logged, never raised."""
        while not self._stop.is_set():
            await self._sleep(self.poll_interval * RULES_EVERY)
            if self._stop.is_set():
                return
            try:
                revision = await self._blocking(reconcile_service, self.store, self.registry, self.service_id)
            except Stopping:
                return
            except Exception as exc:
                log.warning("auto-update reconcile failed: %s", _store_problem(exc))
            else:
                if revision is not None:
                    log.info("auto-update caught up: revision %s: %s", revision.number, revision.summary)

    async def _metric_flushes(self) -> None:
        """On the loop, as every record: what requests recorded reaches /metrics, also the other workers'."""
        while not self._stop.is_set():
            try:
                self.plane.refresh_metrics()
            except Exception:  # a metrics bug must not stop serving
                log.exception("refreshing the metrics failed")
            await self._sleep(METRICS_EVERY_S)

    async def _heartbeats(self) -> None:
        """Beat on its own schedule, so a long ``load()`` or a slow poll never silences this instance."""
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await self._blocking(self._heartbeat_safely)
            except Stopping:
                return
            await self._sleep(self.heartbeat_interval - (time.monotonic() - started))

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when ``stop`` is called."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(seconds, 0.0))

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a thread, awaited until it returns; on ``stop``, ``STOP_GRACE_S`` more, then ``Stopping``.

        Not the loop's executor: a thread it holds (a load that takes minutes, a call to an unreachable
        store) would hold the process's exit; a daemon thread is left behind.
        """
        if self._stop.is_set():
            raise Stopping
        work = in_daemon_thread(asyncio.get_running_loop(), fn, *args)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not work.done():
            await asyncio.wait({work}, timeout=STOP_GRACE_S)
        if not work.done():
            work.add_done_callback(retrieve)
            raise Stopping
        return work.result()

    async def _tick(self) -> None:
        try:
            head = await self._blocking(self.store.head, self.service_id)
        except Exception as exc:  # keep serving what is loaded; the store may be back by the next poll
            self._store_down(exc)
            return
        self._store_up()
        if head != self.swap.applied:
            self.retry.reset()
        elif time.monotonic() < self._retry_at:
            return
        elif self.plane.table.failed:  # a load may have failed for a passing reason (artifact store down)
            log.info("retrying %s endpoint(s) that failed to load", len(self.plane.table.failed))
        elif not await self._blocking(self.swap.outdated):
            return
        self.loading_revision = head
        try:
            await self._blocking(self.swap.apply, head)  # on stop, a load in progress is left to finish alone
        except Exception:
            log.exception("reconcile of service %s failed; serving revision %s", self.service_id, self.swap.applied)
            return
        self._retry_at = time.monotonic() + self.retry.next()
        await self._blocking(self._heartbeat_safely)  # `ferry status` shows the change now, not a beat later

    def _store_down(self, exc: Exception) -> None:
        problem = _store_problem(exc)
        if problem != self.store_error:  # once per outage, not once per poll
            applied = self.swap.applied
            serving = f"serving revision {applied} until it is back" if applied else "retrying"
            log.warning("%s; %s", problem, serving)
        self.store_error = problem

    def _store_up(self) -> None:
        if self.store_error is not None:
            log.info("store reachable again")
        self.store_error = None

    # heartbeats ---------------------------------------------------------------------------------

    def _heartbeat_safely(self) -> None:
        assert self.instance_id is not None  # beats start once ``_register`` set it
        try:
            if not self.store.heartbeat(self.instance_id, self.swap.applied, self.state()):
                # Pruned as dead after a long silence (a paused process): come back as a new instance.
                self.instance_id = self.store.register_instance(self.service_id, socket.gethostname(), os.getpid())
        except Exception as exc:
            if not self._beat_failing:  # once per outage: the poll reports the store's state too
                log.warning("heartbeat failed: %s", _store_problem(exc))
            self._beat_failing = True
        else:
            self._beat_failing = False

    def state(self) -> dict[str, Any]:
        """What `ferry status` shows for this instance."""
        import psutil

        self._process = self._process or psutil.Process()
        return {
            "endpoints": self._rates.add(self.plane.endpoint_states(), *self._latency()),
            "shadows": self.plane.shadows.states(self.plane.table.shadows),
            "heartbeat_interval": self.heartbeat_interval,
            "started_at": self._process.create_time(),
            "cpu_percent": self._process.cpu_percent(),
            "rss_bytes": self._process.memory_info().rss,
            "log": self.recent.snapshot(),
        }

    def _latency(self) -> tuple[dict[str, list[int]], list[float]]:
        """Each version's latency observations per bucket since it loaded, and the buckets' bounds (none without
        metrics)."""
        found: dict[str, list[int]] = {}
        bounds: list[float] = []
        for key, runtime in self.plane.table.runtimes.items():
            histogram = runtime.meter.latency
            if isinstance(histogram, FastHistogram):  # metrics off: nothing to read
                found[key], bounds = histogram.cumulative(), histogram.bounds
        return found, bounds

    def metrics_targets(self) -> list[dict[str, Any]]:
        """Prometheus http_sd groups: every live instance of the service that reports its own metrics address
        (the replicas of ``ferry serve --ray``); [] for plain ``ferry serve``, scraped at its HTTP port."""
        return targets(self.service_id, [i.state for i in self.store.list_instances(self.service_id)])

    def _shutdown(self) -> None:
        """Deregister, then unload every version (its requests still running get ``STOP_DRAIN_S`` in all)."""
        if self.instance_id:
            try:
                self.store.remove_instance(self.instance_id)
            except Exception:
                log.exception("could not deregister instance %s", self.instance_id)
        drain_until = time.monotonic() + min(self.swap.drain_timeout, STOP_DRAIN_S)
        for runtime in self.plane.table.runtimes.values():
            try:
                runtime.retire(round(max(0.0, drain_until - time.monotonic()), 2))
            except Exception as exc:
                log.error("unload of endpoint %s raised %s: %s", runtime.key, type(exc).__name__, exc)


def _store_problem(exc: BaseException) -> str:
    """A ferry error as it is (no such service); anything else as the store being unreachable, in one line."""
    if isinstance(exc, FerryError):
        return str(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__  # SQLAlchemy appends the SQL and a docs link
    return f"store unreachable: {first[:300]}"
