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
from pathlib import Path
from typing import Any

from ferry.control.spec import EndpointSpec
from ferry.control.store import Store
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry
from ferry.serving.dataplane import DataPlane, no_statistics
from ferry.serving.pipeline import EndpointRuntime
from ferry.serving.routing import RouteTable

log = logging.getLogger(__name__)

RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0
"""Endpoints that failed to load are retried after 5 s, then 10, 20, ... up to every 5 minutes."""


class RecentLog(logging.Handler):
    """Keeps the last lines ferry logged, for the heartbeat."""

    def __init__(self, size: int = 20) -> None:
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{time.strftime('%H:%M:%S')} {record.levelname} {record.getMessage()}"[:500])


class Reconciler:
    """Keeps one instance's RouteTable equal to its service's newest revision, and heartbeats."""

    def __init__(
        self,
        plane: DataPlane,
        store: Store,
        registry: ModelRegistry,
        artifacts: ArtifactStore,
        service_id: str,
        poll_interval: float = 1.0,
        heartbeat_interval: float = 2.0,
    ) -> None:
        self.plane = plane
        self.store = store
        self.registry = registry
        self.artifacts = artifacts
        self.service_id = service_id
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.instance_id: str | None = None
        self.applied: int | None = None
        self.recent = RecentLog()
        self._stop = asyncio.Event()
        self._retry_delay = RETRY_FIRST_S
        self._retry_at = 0.0
        self._process: Any = None

    async def run(self) -> None:
        """Poll until ``stop``; every blocking step runs in a thread so requests keep flowing."""
        logging.getLogger("ferry").addHandler(self.recent)
        self.instance_id = await asyncio.to_thread(
            self.store.register_instance, self.service_id, socket.gethostname(), os.getpid()
        )
        last_beat = 0.0
        try:
            while not self._stop.is_set():
                await self._tick()
                if time.monotonic() - last_beat >= self.heartbeat_interval:
                    await asyncio.to_thread(self._heartbeat_safely)
                    last_beat = time.monotonic()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.poll_interval)
        finally:
            logging.getLogger("ferry").removeHandler(self.recent)
            await asyncio.to_thread(self._shutdown)

    def stop(self) -> None:
        self._stop.set()

    async def _tick(self) -> None:
        try:
            head = await asyncio.to_thread(self.store.head, self.service_id)
            if head != self.applied:
                self._retry_delay = RETRY_FIRST_S
            elif not (self.plane.table.failed and time.monotonic() >= self._retry_at):
                return
            else:  # a load may have failed for a passing reason (artifact store down): try again, backing off
                log.info("retrying %s endpoint(s) that failed to load", len(self.plane.table.failed))
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_S)
            await asyncio.to_thread(self.apply, head)
            self._retry_at = time.monotonic() + self._retry_delay
        except Exception:  # the store may be briefly unreachable: keep serving what is loaded
            log.exception("reconcile of service %s failed; serving revision %s", self.service_id, self.applied)

    # applying a revision ------------------------------------------------------------------------

    def apply(self, number: int) -> None:
        """Make revision ``number`` live: build what changed, swap tables, retire what left."""
        desired = self.store.get_revision(self.service_id, number).config.endpoints
        current = self.plane.table
        keep = {k: rt for k, rt in current.runtimes.items() if desired.get(k) == rt.spec}
        to_build = [spec for key, spec in desired.items() if key not in keep]
        if to_build:
            self.plane.swap(dataclasses.replace(current, loading=frozenset(s.key for s in to_build)))
        built, failed = self._build_all(to_build)
        for key in failed:  # a version that fails to load leaves the one it replaces serving
            if key in current.runtimes:
                keep[key] = current.runtimes[key]
        self.plane.swap(RouteTable(revision=number, runtimes={**keep, **built}, failed=failed))
        self.applied = number
        retired = [rt for key, rt in current.runtimes.items() if self.plane.table.runtimes.get(key) is not rt]
        for runtime in retired:
            self._retire(runtime)
        log.info("revision %s live: %s endpoint(s), %s failed", number, len(keep) + len(built), len(failed))

    def _build_all(self, specs: list[EndpointSpec]) -> tuple[dict[str, EndpointRuntime], dict[str, str]]:
        built: dict[str, EndpointRuntime] = {}
        failed: dict[str, str] = {}
        for spec in specs:
            try:
                built[spec.key] = self.build(spec)
            except Exception as exc:
                failed[spec.key] = str(exc) if str(exc) else type(exc).__name__
                log.error("endpoint %s failed to load: %s", spec.key, failed[spec.key])
        return built, failed

    def build(self, spec: EndpointSpec) -> EndpointRuntime:
        """Fetch the endpoint's artifacts (cached by sha256), load it, and warm it up when asked."""
        model_path = self._model_path(spec)
        code_path = self.artifacts.fetch(spec.preprocess) if spec.preprocess else None
        runtime = EndpointRuntime.build(spec, model_path, code_path, self.plane.send_request_for(spec.engine))
        if "warmup" in spec.aux_config:
            body = spec.aux_config["warmup"]
            asyncio.run(runtime.run(body, no_statistics, self.plane.pool))
            runtime.requests = runtime.errors = 0
        return runtime

    def _model_path(self, spec: EndpointSpec) -> Path | None:
        if not spec.model_id:
            return None
        return self.artifacts.fetch(self.registry.get(spec.model_id).artifact)

    def _retire(self, runtime: EndpointRuntime) -> None:
        if not runtime.drain(timeout=60.0):
            log.warning("endpoint %s still had requests in flight after 60 s; unloading it", runtime.key)
        try:
            runtime.close()
        except Exception as exc:
            log.error("unload of endpoint %s raised %s: %s", runtime.key, type(exc).__name__, exc)

    # heartbeats ---------------------------------------------------------------------------------

    def _heartbeat_safely(self) -> None:
        try:
            self.store.heartbeat(self.instance_id, self.applied, self.state())
        except Exception:
            log.exception("heartbeat failed")

    def state(self) -> dict[str, Any]:
        """What `ferry status` shows for this instance."""
        import psutil

        self._process = self._process or psutil.Process()
        return {
            "endpoints": self.plane.endpoint_states(),
            "heartbeat_interval": self.heartbeat_interval,
            "cpu_percent": self._process.cpu_percent(),
            "rss_bytes": self._process.memory_info().rss,
            "log": list(self.recent.lines),
        }

    def _shutdown(self) -> None:
        for runtime in self.plane.table.runtimes.values():
            self._retire(runtime)
        if self.instance_id:
            try:
                self.store.remove_instance(self.instance_id)
            except Exception:
                log.exception("could not deregister instance %s", self.instance_id)
