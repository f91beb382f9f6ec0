"""The ingress side: an endpoint's model stage as calls to its model deployment, and the reconciler that
builds such runtimes (no model is loaded in an ingress replica)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import RayActorError, RayError
from ray.serve.exceptions import DeploymentUnavailableError, RayServeException, ReplicaUnavailableError

from ferry.control.spec import EndpointSpec
from ferry.engines.base import StatsFn
from ferry.errors import EngineError, FerryError, NotReady
from ferry.rayserve.apps import MODEL_DEPLOYMENT, colocated, model_app
from ferry.serving.pipeline import EndpointRuntime
from ferry.serving.reconciler import Reconciler
from ferry.serving.userclass import load_user_code
from ferry.serving.v2 import Signature

log = logging.getLogger(__name__)

RETRIES = 3
"""Times a request is sent again after the model replica it reached died."""
LOST = (RayActorError, ReplicaUnavailableError)
"""The replica died or cannot be reached: the request did not complete there."""
READY_TIMEOUT_S = 300.0
"""How long an ingress replica waits for a new version's model deployment to be running."""
RETRY_AFTER_S = 1
ROLE = "ray ingress"


class RayEngine:
    """Sends preprocess's output to the version's model deployment and returns what its engine answered."""

    is_async = True

    def __init__(self, spec: EndpointSpec, service_id: str) -> None:
        self.endpoint_key = spec.key
        self.app = model_app(service_id, spec)
        self.handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=self.app)
        self.waiting = 0
        """Requests waiting for the model deployment now (the ingress's autoscaling leaves them out)."""
        self.v2_signature: Signature | FerryError | None = None
        """The version's V2 tensors from a model replica (``fetch_signature``), or why it has none."""

    def fetch_signature(self) -> None:
        """Ask a model replica for the version's V2 tensors, once, at build time (blocking)."""
        try:
            self.v2_signature = self.handle.signature.remote().result()
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
        idempotent per request): Ray Serve routes the retry to a live replica, or holds it for the new one."""
        for attempt in range(RETRIES + 1):
            try:
                return await method.remote(*args)
            except LOST as exc:
                if attempt == RETRIES:
                    raise self._error(exc) from None
                log.warning("endpoint %s: a model replica was lost (%s); sending the request again", self.endpoint_key,
                            type(exc).__name__)  # fmt: skip
            except (RayError, RayServeException) as exc:
                raise self._error(exc) from None
        raise AssertionError("unreachable")

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


def wait_running(app: str, timeout: float = READY_TIMEOUT_S, interval: float = 0.2) -> None:
    """Block until application ``app`` is RUNNING (its replicas are up); NotReady naming its state if not."""
    deadline, status = time.monotonic() + timeout, "NOT_STARTED"
    while time.monotonic() < deadline:
        found = serve.status().applications.get(app)
        status = found.status if found is not None else "NOT_STARTED"
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            raise EngineError(f"the model deployment {app} failed to deploy: {found.message}")
        time.sleep(interval)
    raise NotReady(f"the model deployment {app} is not running after {timeout:g} s (state {status})", retry_after=5)


class RayReconciler(Reconciler):
    """A ``Reconciler`` whose runtimes run pre/post here and the model on the version's model deployment."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.report: dict[str, Any] = {"role": ROLE}
        """Added to every heartbeat: the role, and where this replica's metrics are served."""

    def build(self, spec: EndpointSpec) -> EndpointRuntime:
        """Import the code (no ``load``: the model replicas load), wait for the model deployment, warm up.
        A colocated version (aux ``ray.colocate``) loads here, as under ``ferry serve``."""
        if colocated(spec):
            return super().build(spec)
        wait_running(model_app(self.service_id, spec))
        engine = RayEngine(spec, self.service_id)
        engine.fetch_signature()
        code_path = self.artifacts.fetch(spec.preprocess) if spec.preprocess else None
        user = load_user_code(code_path, spec, self.plane.send_request_for(spec.engine))
        return self.warm(EndpointRuntime(spec, user, engine))

    def state(self) -> dict[str, Any]:
        """``Reconciler.state`` plus the model applications this replica routes to (the launcher keeps those)."""
        state = {**super().state(), **self.report}
        engines = [runtime.engine for runtime in self.plane.table.runtimes.values()]
        state["ray_apps"] = sorted({e.app for e in engines if isinstance(e, RayEngine)})
        return state
