"""The ingress side: an endpoint's model stage as calls to its model deployment, and the reconciler that
builds such runtimes (an ingress replica loads a model itself only for a colocated version, or as a bridge
while a new version's model deployment starts)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import RayActorError, RayError
from ray.serve.exceptions import DeploymentUnavailableError, RayServeException, ReplicaUnavailableError

from ferry.control.aux_config import queue_limits
from ferry.control.spec import EndpointSpec
from ferry.engines.base import StatsFn
from ferry.engines.loading import preload
from ferry.errors import EngineError, FerryError, NotReady, Timeout
from ferry.rayserve.apps import MODEL_DEPLOYMENT, bridged, colocated, model_app
from ferry.serving.request.pipeline import EndpointRuntime
from ferry.serving.revisions.reconciler import Reconciler
from ferry.serving.revisions.swap import RevisionSwap
from ferry.serving.usercode.userclass import load_user_code
from ferry.serving.v2 import Signature

log = logging.getLogger(__name__)

RETRIES = 3
"""Times a request is sent again after the model replica it reached died."""
LOST = (RayActorError, ReplicaUnavailableError)
"""The replica died or cannot be reached: the request did not complete there."""
READY_TIMEOUT_S = 300.0
"""How long an ingress replica waits for a new version's model deployment to be running."""
SIGNATURE_TIMEOUT_S = 30.0
"""How long an ingress replica waits for a model replica to describe the version's V2 tensors."""
MARGIN_S = 0.5
"""A model call's timeout is the endpoint's request timeout less this: a lost call is answered 503 by ferry before
the request's own timeout (504) cuts it."""
RETRY_AFTER_S = 1
ROLE = "ray ingress"


class RayEngine:
    """Sends preprocess's output to the version's model deployment and returns what its engine answered."""

    is_async = True

    def __init__(self, spec: EndpointSpec, service_id: str, default_timeout_s: float | None) -> None:
        self.endpoint_key = spec.key
        self.app = model_app(service_id, spec)
        self.handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=self.app)
        timeout_s = queue_limits(spec.engine, spec.aux_config).request_timeout_s or default_timeout_s
        self.timeout_s = max(MARGIN_S, timeout_s - MARGIN_S) if timeout_s else None
        """How long a model call may take, retries included: the endpoint's request timeout less ``MARGIN_S``
        (None: no request timeout, none here either)."""
        self.waiting = 0
        """Requests waiting for the model deployment now (the ingress's autoscaling leaves them out)."""
        self.v2_signature: Signature | FerryError | None = None
        """The version's V2 tensors from a model replica (``fetch_signature``), or why it has none."""

    def fetch_signature(self) -> None:
        """Ask a model replica for the version's V2 tensors, once, at build time (blocking)."""
        try:
            self.v2_signature = self.handle.signature.remote().result(timeout_s=SIGNATURE_TIMEOUT_S)
        except TimeoutError:
            self.v2_signature = NotReady(
                f"endpoint {self.endpoint_key}: no model replica of {self.app} described its tensors within "
                f"{SIGNATURE_TIMEOUT_S:g} s",
                endpoint=self.endpoint_key,
            )
        except (RayError, RayServeException) as exc:
            self.v2_signature = self._error(exc)

    async def run(self, data: Any, state: dict, collect: StatsFn) -> Any:
        answer, new_state, collected = await self._call(self.handle, data, state)
        state.update(new_state)
        if collect is not None:
            for values in collected:
                collect(values)
        return answer

    async def run_tensors(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return await self._call(self.handle.tensors, feeds)

    async def _call(self, method: Any, *args: Any) -> Any:
        """``_send``, counted in ``waiting`` meanwhile."""
        self.waiting += 1
        try:
            return await self._send(method, *args)
        finally:
            self.waiting -= 1

    async def _send(self, method: Any, *args: Any) -> Any:
        """``method.remote(*args)``, sent again when the replica it reached died under it (a model call is
        idempotent per request): Ray Serve routes the retry to a live replica, or holds it for the new one.

        All attempts together get ``timeout_s``: past it the call is cancelled and answered 503 with Retry-After
        when a replica was lost on the way (a retry found no live one in time), else 504.
        """
        deadline, lost = None if self.timeout_s is None else time.monotonic() + self.timeout_s, None
        for attempt in range(RETRIES + 1):
            response = method.remote(*args)
            try:
                if deadline is None:
                    return await response
                return await asyncio.wait_for(_awaited(response), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                _cancel(response)
                raise self._late(lost) from None
            except LOST as exc:
                if attempt == RETRIES:
                    raise self._error(exc) from None
                lost = exc
                log.warning("endpoint %s: a model replica was lost (%s); sending the request again", self.endpoint_key,
                            type(exc).__name__)  # fmt: skip
            except (RayError, RayServeException) as exc:
                raise self._error(exc) from None
        raise AssertionError("unreachable")

    def _late(self, lost: Exception | None) -> FerryError:
        """No answer within ``timeout_s``: 503 to retry when a replica died on the way, else 504."""
        if lost is not None:
            return NotReady(
                f"endpoint {self.endpoint_key}: the model replica of {self.app} answering this request died "
                f"({type(lost).__name__}) and no other answered within {self.timeout_s:g} s",
                retry_after=RETRY_AFTER_S,
                endpoint=self.endpoint_key,
            )
        return Timeout(
            f"endpoint {self.endpoint_key}: the model deployment {self.app} gave no answer within "
            f"{self.timeout_s:g} s (aux config request_timeout_ms)",
            endpoint=self.endpoint_key,
        )

    def _error(self, exc: Exception) -> FerryError:
        """The model replica's own ferry error as it is (a 422 stays a 422); Ray's failures as 503 or 500."""
        cause = getattr(exc, "cause", None)
        if isinstance(cause, FerryError):
            return cause
        if isinstance(exc, FerryError):
            return exc
        text = f"endpoint {self.endpoint_key}: the model deployment {self.app} failed: {type(exc).__name__}: {exc}"
        if isinstance(exc, (*LOST, DeploymentUnavailableError)):
            return NotReady(text, retry_after=RETRY_AFTER_S, endpoint=self.endpoint_key)
        return EngineError(text, endpoint=self.endpoint_key)

    def close(self) -> None:
        """Nothing to release here: the launcher deletes the deployment once no ingress routes to it."""


async def _awaited(response: Any) -> Any:
    return await response


def _cancel(response: Any) -> None:
    """Cancel a Ray Serve call no one waits for any more (its replica drops it)."""
    cancel = getattr(response, "cancel", None)
    if cancel is not None:
        try:
            cancel()
        except Exception as exc:  # already done or gone: nothing to cancel
            log.debug("cancelling a model call failed: %s", exc)


def app_status(app: str) -> tuple[str, str]:
    """Serve's status of application ``app`` ("NOT_STARTED" when it has none yet) and its message."""
    found = serve.status().applications.get(app)
    return (getattr(found.status, "value", found.status), found.message) if found is not None else ("NOT_STARTED", "")


def wait_running(app: str, timeout: float = READY_TIMEOUT_S, interval: float = 0.2) -> None:
    """Block until application ``app`` is RUNNING (its replicas are up); NotReady naming its state if not."""
    deadline, status = time.monotonic() + timeout, "NOT_STARTED"
    while time.monotonic() < deadline:
        status, message = app_status(app)
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            raise EngineError(f"the model deployment {app} failed to deploy: {message}")
        time.sleep(interval)
    raise NotReady(f"the model deployment {app} is not running after {timeout:g} s (state {status})", retry_after=5)


def _preload_quietly(engine: str) -> None:
    try:
        preload(engine)
    except Exception as exc:  # the bridge will load it, or say why it cannot
        log.debug("preloading engine %s failed: %s", engine, exc)


class RaySwap(RevisionSwap):
    """A ``RevisionSwap`` whose runtimes run pre/post here and the model on the version's model deployment."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bridges: dict[str, EndpointRuntime] = {}
        """Endpoint version -> the runtime loaded here while its model deployment starts (aux ``ray.bridge``)."""
        self.preloaded: set[str] = set()
        """Engines whose libraries this replica imported ahead of a bridge."""
        self.draining: dict[int, EndpointRuntime] = {}
        """The runtimes an ``apply`` in progress started from (those it replaces drain in it): their model
        applications must stay."""

    def build(self, spec: EndpointSpec) -> EndpointRuntime:
        """Import the code (no ``load``: the model replicas load), wait for the model deployment, warm up.

        A colocated version (aux ``ray.colocate``) loads here, as under ``ferry serve``. So does a version
        added or changed while this replica serves (a bridge), when its deployment is not running yet: it
        answers from here at once, and moves to the deployment once that runs (``outdated``)."""
        if colocated(spec):
            return super().build(spec)
        app = model_app(self.service_id, spec)
        if self.applied is not None and bridged(spec) and app_status(app)[0] != "RUNNING":
            runtime = super().build(spec)
            self.bridges = {**self.bridges, spec.key: runtime}  # a new dict: heartbeats read it from their thread
            log.info("endpoint %s: answering from this replica while its model deployment %s starts", spec.key, app)
            return runtime
        wait_running(app)
        if spec.key in self.bridges:
            log.info("endpoint %s: moving to its model deployment %s", spec.key, app)
        elif bridged(spec):
            self._preload(spec.engine)
        engine = RayEngine(spec, self.service_id, self.plane.request_timeout_s)
        engine.fetch_signature()
        code_path = self.artifacts.fetch(spec.preprocess) if spec.preprocess else None
        user = load_user_code(code_path, spec, self.plane.send_request_for(spec.engine))
        return self.warm(EndpointRuntime(spec, user, engine))

    def _preload(self, engine: str) -> None:
        """Import the engine's libraries in the background, once: a later version of it bridges in a
        fraction of a second instead of seconds (scikit-learn: 1.5 s, ~85 MiB resident on the test machine)."""
        if engine not in self.preloaded:
            self.preloaded.add(engine)
            name = f"ferry preload {engine}"
            threading.Thread(target=_preload_quietly, args=(engine,), name=name, daemon=True).start()

    def keeps(self, runtime: EndpointRuntime, spec: EndpointSpec | None) -> bool:
        """A bridge goes on serving until its model deployment runs."""
        return super().keeps(runtime, spec) and not self._crossed(runtime)

    def outdated(self) -> bool:
        """Whether a bridge's model deployment now runs (a call to Serve's controller per bridge serving)."""
        self.bridges = self.serving_bridges()
        return any(self._crossed(runtime) for runtime in self.bridges.values())

    def serving_bridges(self) -> dict[str, EndpointRuntime]:
        served = self.plane.table.runtimes
        return {key: runtime for key, runtime in self.bridges.items() if served.get(key) is runtime}

    def _crossed(self, runtime: EndpointRuntime) -> bool:
        """Whether ``runtime`` is a bridge whose model deployment is RUNNING."""
        key = runtime.spec.key
        return self.bridges.get(key) is runtime and app_status(model_app(self.service_id, runtime.spec))[0] == "RUNNING"

    def apply(self, number: int) -> None:
        """``RevisionSwap.apply``, the runtimes it starts from reported as routed to (``state``) until it returns:
        those it replaces drain within it, and the launcher deleting their model application meanwhile would
        leave a request Ray has not yet given a replica waiting for one that never comes."""
        before = {id(runtime): runtime for runtime in self.plane.table.runtimes.values()}
        self.draining = {**self.draining, **before}  # a new dict: heartbeats read it from their thread
        try:
            super().apply(number)
        finally:
            self.draining = {k: v for k, v in self.draining.items() if k not in before}

    def routed_runtimes(self) -> list[EndpointRuntime]:
        """The runtimes requests may still reach: those served, and those an ``apply`` in progress drains."""
        return [*self.plane.table.runtimes.values(), *self.draining.values()]


class RayReconciler(Reconciler):
    """A ``Reconciler`` with a ``RaySwap``, whose heartbeat reports the model applications it routes to."""

    swap_cls = RaySwap

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.report: dict[str, Any] = {"role": ROLE}
        """Added to every heartbeat: the role, and where this replica's metrics are served."""

    def state(self) -> dict[str, Any]:
        """``Reconciler.state`` plus the model applications this replica routes to, draining runtimes' included
        (the launcher keeps those)."""
        state = {**super().state(), **self.report}
        swap = self.swap
        assert isinstance(swap, RaySwap)  # swap_cls
        engines = [runtime.engine for runtime in swap.routed_runtimes()]
        state["ray_apps"] = sorted({e.app for e in engines if isinstance(e, RayEngine)})
        state["bridged"] = sorted(swap.serving_bridges())
        return state
