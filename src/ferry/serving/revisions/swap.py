"""RevisionSwap: make one service revision live in this process: build and warm what changed, swap, retire.

The ``Reconciler`` holds one (``reconciler.swap``) and calls ``apply`` when the head revision changes or
``outdated`` says a version should be rebuilt; the Ray ingress's ``RaySwap`` overrides ``build``, ``keeps`` and
``outdated``. Everything here blocks: the reconciler runs ``apply`` in a thread, requests flow meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from pathlib import Path

from ferry.control.spec import EndpointSpec, ServiceConfig
from ferry.control.store import Store
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry
from ferry.serving.batching.instances import resident_bytes
from ferry.serving.request.dataplane import DataPlane
from ferry.serving.request.pipeline import EndpointRuntime
from ferry.serving.request.routing import RouteTable
from ferry.serving.revisions.heap import settle

log = logging.getLogger("ferry.serving.reconciler")  # the reconciler's name: users' log filters know these lines by it


class RevisionSwap:
    """``apply(number)`` and the steps it takes (see the module's text)."""

    def __init__(
        self, plane: DataPlane, store: Store, registry: ModelRegistry, artifacts: ArtifactStore, service_id: str
    ) -> None:
        self.plane = plane
        self.store = store
        self.registry = registry
        self.artifacts = artifacts
        self.service_id = service_id
        self.applied: int | None = None
        """The revision this process serves (None: none yet)."""
        self.drain_timeout = 30.0
        """Seconds a retired version's requests may take to finish; the rest are answered 503 when it unloads."""

    def apply(self, number: int) -> None:
        """Make revision ``number`` live: build what changed, swap tables, retire what left."""
        config = self.store.get_revision(self.service_id, number).config
        desired = with_triton_addresses(config)
        current = self.plane.table
        keep = {k: rt for k, rt in current.runtimes.items() if self.keeps(rt, desired.get(k))}
        to_build = [spec for key, spec in desired.items() if key not in keep]
        if to_build:
            self.plane.swap(dataclasses.replace(current, loading=frozenset(s.key for s in to_build)))
        built, failed = self._build_all(to_build)
        for key in failed:  # a version that fails to load leaves the one it replaces serving
            if key in current.runtimes:
                keep[key] = current.runtimes[key]
        for runtime in (*keep.values(), *built.values()):
            self.plane.instrument(runtime, config)
        self.plane.swap(
            RouteTable(
                revision=number,
                runtimes={**keep, **built},
                failed=failed,
                canaries=config.canaries,
                shadows=config.shadows,
            )
        )
        self.applied = number
        retired = [rt for key, rt in current.runtimes.items() if self.plane.table.runtimes.get(key) is not rt]
        for runtime in retired:
            self._retire(runtime)
        if built or retired:  # a change in what is loaded; a failed build's garbage is young: the usual GC frees it
            settle(retired=bool(retired))  # no full collection walks the loaded models' objects on the loop later
        log.info("revision %s live: %s endpoint(s), %s failed", number, len(keep) + len(built), len(failed))

    def keeps(self, runtime: EndpointRuntime, spec: EndpointSpec | None) -> bool:
        """Whether ``runtime`` goes on serving a revision that wants ``spec`` (None: its endpoint left)."""
        return spec == runtime.spec

    def outdated(self) -> bool:
        """Whether some runtime should be rebuilt though the revision did not change (``keeps`` says which)."""
        return False

    def _build_all(self, specs: list[EndpointSpec]) -> tuple[dict[str, EndpointRuntime], dict[str, str]]:
        built: dict[str, EndpointRuntime] = {}
        failed: dict[str, str] = {}
        metrics = self.plane.metrics
        for spec in specs:
            started, memory = time.monotonic(), resident_bytes()
            try:
                built[spec.key] = self.build(spec)
            except Exception as exc:
                failed[spec.key] = str(exc) if str(exc) else type(exc).__name__
                log.error("endpoint %s failed to load: %s", spec.key, failed[spec.key])
                if metrics is not None:
                    metrics.load_failed(spec.name, spec.version)
            else:
                _log_loaded(built[spec.key], time.monotonic() - started, resident_bytes() - memory)
                _check_delay(built[spec.key], self.plane.request_timeout_s)
                if metrics is not None:
                    metrics.loaded(spec.name, spec.version, time.monotonic() - started)
        return built, failed

    def build(self, spec: EndpointSpec) -> EndpointRuntime:
        """Fetch the endpoint's artifacts (cached by sha256), load it, and warm it up when asked."""
        model_path = self._model_path(spec)
        code_path = self.artifacts.fetch(spec.preprocess) if spec.preprocess else None
        runtime = EndpointRuntime.build(spec, model_path, code_path, self.plane.send_request_for(spec.engine))
        return self.warm(runtime)

    def warm(self, runtime: EndpointRuntime) -> EndpointRuntime:
        """Send the aux ``warmup`` body through ``runtime`` once (closing it if that fails); its counters start at 0."""
        if "warmup" in runtime.spec.aux_config:
            try:
                asyncio.run(runtime.run(runtime.spec.aux_config["warmup"], self.plane.pool))
            except BaseException:
                with contextlib.suppress(Exception):  # the warmup's error is the one to report
                    runtime.close()
                raise
            runtime.requests = runtime.errors = 0
        return runtime

    def _model_path(self, spec: EndpointSpec) -> Path | None:
        if not spec.model_id:
            return None
        return self.artifacts.fetch(self.registry.get(spec.model_id).artifact)

    def _retire(self, runtime: EndpointRuntime) -> None:
        """No new requests reach ``runtime``; those in flight finish (up to the drain timeout), then it unloads."""
        if runtime.generates and runtime.inflight:
            log.info(
                "endpoint %s: %d request(s) still generate on the retired version, which stays in memory beside the "
                "new one until they end (at most FERRY_DRAIN_TIMEOUT_S=%g s, then they end with finish_reason abort)",
                runtime.key,
                runtime.inflight,
                self.drain_timeout,
            )
        try:
            runtime.retire(self.drain_timeout)
        except Exception as exc:
            log.error("unload of endpoint %s raised %s: %s", runtime.key, type(exc).__name__, exc)


def with_triton_addresses(config: ServiceConfig) -> dict[str, EndpointSpec]:
    """The revision's endpoints, each triton one carrying its Triton address in aux ``triton_grpc_server``.

    An endpoint's own address wins; the others get the service's (``ferry config --triton-grpc-server``).
    The address is then part of the spec the reconciler compares: a new service address rebuilds exactly
    the triton endpoints that use it, and an unchanged revision rebuilds nothing.
    """
    address = config.settings.triton_grpc_server
    return {key: _with_triton_address(spec, address) for key, spec in config.endpoints.items()}


def _with_triton_address(spec: EndpointSpec, address: str | None) -> EndpointSpec:
    if spec.engine != "triton" or not address or spec.aux_config.get("triton_grpc_server"):
        return spec
    return spec.model_copy(update={"aux_config": {**spec.aux_config, "triton_grpc_server": address}})


def _check_delay(runtime: EndpointRuntime, default_timeout_s: float | None) -> None:
    """Warn (``ferry status`` shows it) when a batch would wait out the whole request timeout."""
    timeout_s = runtime.timeout_s or default_timeout_s
    if runtime.batcher is None or not timeout_s:
        return
    delay_s = runtime.batcher.policy.max_queue_delay_s
    if delay_s >= timeout_s:
        log.warning(
            "endpoint %s: max_queue_delay_ms=%g is not below its request timeout of %g ms, so a request waiting "
            "for a batch can time out: lower max_queue_delay_ms or raise request_timeout_ms (FERRY_REQUEST_TIMEOUT_S)",
            runtime.key,
            delay_s * 1000,
            timeout_s * 1000,
        )


def _log_loaded(runtime: EndpointRuntime, seconds: float, grown: int) -> None:
    """One line per loaded version: how long it took, its model instances and what it added to memory."""
    batcher = runtime.batcher
    instances = f", batching with {batcher.policy.instances} model instance(s) as threads" if batcher else ""
    log.info("endpoint %s loaded in %.2f s%s, +%.0f MiB resident", runtime.key, seconds, instances, grown / 2**20)
