"""The reconcile of `ferry triton sync`: write what changed, load it through Triton's model control, unload the rest."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.control.spec import EndpointSpec, ServiceConfig
from ferry.control.store import Store
from ferry.control.triton_config import triton_model_name
from ferry.errors import InvalidInput, NotReady
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry
from ferry.triton.repository import ModelFiles, clean_staging, model_files, remove_model, write_model, written

LOAD_TIMEOUT_S = 600.0
"""How long one load or unload may take (a large model); past it, the model is reported failed (Triton goes on)."""
CHECK_TIMEOUT_S = 5.0
"""How long a liveness or readiness question to Triton may take: one that hangs counts as not reachable."""
CONNECT_TIMEOUT_S = 5.0
ERROR_CHARS = 600


@dataclass(frozen=True)
class Outcome:
    """What a sync did for one Triton model: loaded, reloaded, unchanged, unloaded or failed (with why)."""

    endpoint: str
    model: str
    change: str
    error: str = ""

    @property
    def state(self) -> str:
        """What `ferry status` shows: ready, failed, or removed."""
        return {"failed": "failed", "unloaded": "removed"}.get(self.change, "ready")


class TritonControl:
    """Triton's model-control API (``--model-control-mode=explicit``) through tritonclient; every call is
    bounded (``CHECK_TIMEOUT_S`` for questions, ``LOAD_TIMEOUT_S`` for loads and unloads).

    ``url``: ``http://host:port`` or ``host:port`` for the HTTP client, ``grpc://host:port`` for gRPC. The
    clients are made on first use, in the thread that uses them (the HTTP one runs on gevent, per thread).
    """

    def __init__(self, url: str) -> None:
        scheme, _, self.address = url.rpartition("://")
        self.url, self.protocol = url, "gRPC" if scheme == "grpc" else "HTTP"
        try:
            if scheme == "grpc":
                import tritonclient.grpc as module
            else:
                import tritonclient.http as module
        except ImportError:
            raise InvalidInput(
                "`ferry triton sync` needs tritonclient: pip install 'ferry[triton]' (or 'tritonclient[http,grpc]')"
            ) from None
        self._module: Any = module
        self._clients: dict[float, Any] = {}

    def _client(self, timeout_s: float) -> Any:
        """gRPC: one client, each call given its own deadline; HTTP: one client per read timeout."""
        if self.protocol == "gRPC":
            timeout_s = 0.0
        if timeout_s not in self._clients:
            if self.protocol == "gRPC":
                self._clients[timeout_s] = self._module.InferenceServerClient(self.address)
            else:
                self._clients[timeout_s] = self._module.InferenceServerClient(
                    self.address, connection_timeout=CONNECT_TIMEOUT_S, network_timeout=timeout_s
                )
        return self._clients[timeout_s]

    def _call(self, method: str, timeout_s: float, *args: Any) -> Any:
        client = self._client(timeout_s)
        if self.protocol == "gRPC":
            return getattr(client, method)(*args, client_timeout=timeout_s)
        return getattr(client, method)(*args)

    def live(self) -> bool:
        try:
            return bool(self._call("is_server_live", CHECK_TIMEOUT_S))
        except Exception:  # refused, reset, timed out: each means not reachable now
            return False

    def ready(self, name: str) -> bool:
        try:
            return bool(self._call("is_model_ready", CHECK_TIMEOUT_S, name))
        except Exception:  # gRPC raises for a model Triton does not know
            return False

    def load(self, name: str) -> None:
        self._call("load_model", LOAD_TIMEOUT_S, name)

    def unload(self, name: str) -> None:
        self._call("unload_model", LOAD_TIMEOUT_S, name)


class RepositorySync:
    """Makes ``repository`` hold, and Triton serve, every ``triton`` endpoint of a service config."""

    def __init__(
        self,
        service_id: str,
        repository: Path,
        control: TritonControl,
        registry: ModelRegistry,
        artifacts: ArtifactStore,
    ) -> None:
        self.service_id = service_id
        self.repository = repository
        self.control = control
        self.registry = registry
        self.artifacts = artifacts
        self.failed: dict[str, Outcome] = {}

    def reconcile(self, config: ServiceConfig, retry_failed: bool = True) -> list[Outcome]:
        """One pass; a model that fails is reported for its endpoint and the others go on.

        ``retry_failed=False`` keeps a model that failed to load failed until its folder changes.
        """
        if not self.control.live():
            raise NotReady(
                f"Triton at {self.control.url} is not reachable: start tritonserver "
                f"--model-repository {self.repository} --model-control-mode=explicit, or pass --triton-url"
            )
        self.repository.mkdir(parents=True, exist_ok=True)
        clean_staging(self.repository)
        wanted = triton_endpoints(config)
        outcomes = [self._apply(name, spec, retry_failed) for name, spec in wanted.items()]
        gone = [(name, doc) for name, doc in written(self.repository, self.service_id).items() if name not in wanted]
        outcomes += [self._remove(name, str(doc.get("endpoint", name))) for name, doc in gone]
        self.failed = {o.model: o for o in outcomes if o.change == "failed"}
        return outcomes

    def _apply(self, name: str, spec: EndpointSpec, retry_failed: bool) -> Outcome:
        try:
            files = self._files(name, spec)
            before = written(self.repository, self.service_id).get(name, {}).get("fingerprint")
            if before == files.fingerprint and (name in self.failed and not retry_failed):
                return self.failed[name]
            if before == files.fingerprint and self.control.ready(name):
                return Outcome(spec.key, name, "unchanged")
            if before != files.fingerprint:
                write_model(self.repository, files, self.service_id)
            self.control.load(name)
            return Outcome(spec.key, name, "reloaded" if before and before != files.fingerprint else "loaded")
        except Exception as exc:  # one endpoint's failure (a missing model, Triton's refusal) never stops the rest
            return Outcome(spec.key, name, "failed", _one_line(exc))

    def _files(self, name: str, spec: EndpointSpec) -> ModelFiles:
        if not spec.model_id:
            raise InvalidInput(f"endpoint {spec.key} has no model yet: nothing to give Triton")
        ref = self.registry.get(spec.model_id).artifact
        return model_files(spec, name, self.artifacts.fetch(ref), ref.sha256)

    def _remove(self, name: str, endpoint: str) -> Outcome:
        try:
            self.control.unload(name)
        except Exception as exc:
            return Outcome(endpoint, name, "failed", f"unload failed, folder kept: {_one_line(exc)}")
        remove_model(self.repository, name)
        return Outcome(endpoint, name, "unloaded")


def triton_endpoints(config: ServiceConfig) -> dict[str, EndpointSpec]:
    """Triton model name -> the ``triton`` endpoint version it serves, sorted by name."""
    found = {triton_model_name(s.name, s.version): s for s in config.endpoints.values() if s.engine == "triton"}
    return dict(sorted(found.items()))


def _one_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)  # tritonclient's, without prefix
    return " ".join(str(text or type(exc).__name__).split())[:ERROR_CHARS]


class StatusReport:
    """The watching sync as an instance of the service, so `ferry status` shows each Triton model's state."""

    def __init__(self, store: Store, service_id: str, details: dict[str, Any], interval: float) -> None:
        self.store, self.service_id, self.interval = store, service_id, interval
        self.details = {"role": "triton sync", "started_at": time.time(), "heartbeat_interval": interval, **details}
        self.instance_id = store.register_instance(service_id, f"{socket.gethostname()} (triton sync)", os.getpid())
        self.revision: int | None = None
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.beat_at = 0.0
        self._lock = threading.Lock()
        self._closed = False

    def record(self, revision: int, outcomes: list[Outcome]) -> None:
        self.revision = revision
        self.endpoints = {
            o.endpoint: {"state": o.state, "triton_model": o.model, **({"error": o.error} if o.error else {})}
            for o in outcomes
            if o.change != "unloaded"
        }
        self.beat_at = 0.0

    def beat(self) -> None:
        """Heartbeat when one is due (or after a change); register again if the store forgot this one."""
        if time.monotonic() - self.beat_at < self.interval:
            return
        state = {**self.details, "endpoints": self.endpoints}
        with self._lock:  # never beside close: a beat after it would register this instance again
            if self._closed:
                return
            if not self.store.heartbeat(self.instance_id, self.revision, state):
                host = f"{socket.gethostname()} (triton sync)"
                self.instance_id = self.store.register_instance(self.service_id, host, os.getpid())
        self.beat_at = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.store.remove_instance(self.instance_id)


RECHECK_S = 10.0
"""Between revisions, the models are checked this often: a restarted Triton gets its models back."""


def watch(
    sync: RepositorySync,
    store: Store,
    service_id: str,
    interval: float,
    emit: Callable[[str], None],
    status: StatusReport | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Reconcile on every new head revision (polled each ``interval`` s) and now and then, until ``stop`` is set.

    ``stop`` wakes the wait between passes; a pass in progress (a load, a call to the store) runs to its end
    first, so the caller waits for this in a thread it may abandon (`ferry triton sync --watch` does).
    """
    stop = stop or threading.Event()
    last: dict[str, Outcome] = {}
    head, recheck_at, problem = None, 0.0, ""
    while not stop.is_set():
        try:
            new_head = store.head(service_id)
            if new_head != head or time.monotonic() >= recheck_at:
                outcomes = sync.reconcile(store.get_revision(service_id, new_head).config, new_head != head)
                last = _report(new_head, outcomes, last, emit)
                head, recheck_at = new_head, time.monotonic() + RECHECK_S
                if status is not None:
                    status.record(new_head, outcomes)
            if status is not None and not stop.is_set():
                status.beat()
            problem = ""
        except Exception as exc:  # the store or Triton away: say so once, keep polling
            if _one_line(exc) != problem:
                problem = _one_line(exc)
                emit(f"waiting: {problem}")
        stop.wait(interval)


def _report(
    revision: int, outcomes: list[Outcome], last: dict[str, Outcome], emit: Callable[[str], None]
) -> dict[str, Outcome]:
    """One line per model whose state changed since the last pass."""
    for o in outcomes:
        if o.change != "unchanged" and last.get(o.model) != o:
            emit(describe(revision, o))
    return {o.model: o for o in outcomes if o.change != "unloaded"}


def describe(revision: int, o: Outcome) -> str:
    """``revision 4: endpoint a/2 -> Triton model a_2: loaded`` (or failed, with why)."""
    head = f"revision {revision}: endpoint {o.endpoint} -> Triton model {o.model}: {o.change}"
    return f"{head}: {o.error}" if o.error else head
