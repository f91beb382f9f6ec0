"""``ferry serve --ray``: deploy the service on Ray Serve and keep its model deployments equal to the store.

The ingress application is deployed once, without waiting for it to run (a replica starting may need a model
application that only this loop deploys: one of a revision made meanwhile); each endpoint version of the newest
revision gets a model application (``apps.model_app``). A new or changed version's application is deployed when
its revision appears; the ingress replicas wait for it to run and warm it before they route to it. An application
that left the revision is deleted once no live ingress replica routes to it any more.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import ray
from ray import serve

from ferry.control.spec import EndpointSpec
from ferry.control.store import Store
from ferry.rayserve import proxy_guard
from ferry.rayserve.apps import QUIET, Pace, colocated, ingress_app, model_app, model_options
from ferry.rayserve.engine import ROLE, app_status
from ferry.rayserve.ingress import Ingress
from ferry.rayserve.model import ModelStage
from ferry.serving.revisions.swap import with_triton_addresses
from ferry.settings import Settings

if TYPE_CHECKING:
    from ferry.stopping import Stop

log = logging.getLogger(__name__)

PROXY_MARGIN_S = 5.0
"""Ray's HTTP proxy answers 408 to a request that has no answer this long after the longest of ferry's request
timeouts (ferry's own 503 or 504 comes first): a request lost before ferry's code is not left unanswered."""
DRAIN_S = 1.0
"""Once asked to stop, a step in progress (a deploy, a call to the store) gets this long to end; then it is left."""
DELETE_S = 2.0
"""Then deleting the applications, deregistering and disconnecting from the cluster get this long."""
LAUNCHER_POLL_S = 0.2
"""The launcher looks for a new revision at least this often (FERRY_POLL_INTERVAL when shorter): a new
version's model replica takes seconds to start, so the launcher starts it first; the ingress replicas,
polling at FERRY_POLL_INTERVAL, find the revision while it starts. One small query a poll, one process."""


class Launcher:
    """Deploys one service's applications and follows its revisions until stopped."""

    def __init__(self, store: Store, service_id: str, settings: Settings, ingress: dict[str, Any], host: str) -> None:
        self.store = store
        self.service_id = service_id
        self.settings = settings
        self.ingress = ingress
        self.env = replica_env(settings, service_id, host)
        self.pace = pace(settings)
        self.applied: int | None = None
        self.desired: dict[str, EndpointSpec] = {}
        self.instance_id: str | None = None
        self._next_beat = 0.0
        self._deleting: set[str] = set()
        self._stop = threading.Event()
        self.ingress_running = False

    def run(self) -> None:
        """Deploy the models of the newest revision, then the ingress; follow the store until ``stop``."""
        self.instance_id = self.store.register_instance(self.service_id, socket.gethostname(), os.getpid())
        self._tick_safely()  # the models first: the ingress replicas wait for their applications
        self._deploy_ingress()
        while not self._stop.wait(min(self.settings.poll_interval, LAUNCHER_POLL_S)):
            self._tick_safely()

    def _tick_safely(self) -> None:
        try:
            self.tick()
        except Exception as exc:  # the store or Serve failing: the cluster keeps serving what it has
            log.warning("following the store failed: %s; the cluster serves what it has", exc)

    def stop(self) -> None:
        self._stop.set()

    def tick(self) -> None:
        """Deploy what a new head revision added or changed; every heartbeat interval, read Serve's state,
        delete what the revision dropped once nothing routes to it, and heartbeat."""
        if not self.ingress_running and app_status(ingress_app(self.service_id))[0] == "RUNNING":
            self.ingress_running = True
            log.info("ingress %s running", ingress_app(self.service_id))
        head = self.store.head(self.service_id)
        if head != self.applied:
            config = self.store.get_revision(self.service_id, head).config
            specs = [s for s in with_triton_addresses(config).values() if not colocated(s)]
            self.desired = {model_app(self.service_id, s): s for s in specs}
            self._deploy_models([app for app in self.desired if app not in self.running()])
            self.applied = head
        elif time.monotonic() < self._next_beat:
            return
        self._next_beat = time.monotonic() + self.settings.heartbeat_interval
        self._delete_unrouted()
        self._heartbeat()

    def running(self) -> set[str]:
        """This service's model applications on the cluster, in any state."""
        prefix = ingress_app(self.service_id) + "-"
        return {name for name in serve.status().applications if name.startswith(prefix)}

    def _heartbeat(self) -> None:
        """Show up in ``ferry status`` with Serve's view of the service's applications and replicas."""
        state = {"role": "ray launcher", "ray": serve_state(ingress_app(self.service_id))}
        if self.instance_id and not self.store.heartbeat(self.instance_id, self.applied, state):
            self.instance_id = self.store.register_instance(self.service_id, socket.gethostname(), os.getpid())

    def _deploy_models(self, apps: Iterable[str]) -> None:
        targets = [
            serve.RunTarget(
                # a Deployment (@serve.deployment): mypy keeps a decorated class's own type
                target=ModelStage.options(**model_options(self.desired[app], self.pace)).bind(  # type: ignore[attr-defined]
                    self.desired[app].model_dump_json(), self.env
                ),
                name=app,
                route_prefix=None,
            )
            for app in apps
        ]
        if targets:
            serve.run_many(targets, wait_for_applications_running=False)
            for target in targets:
                log.info("deploying %s (%s)", target.name, self.desired[target.name].key)

    def _deploy_ingress(self) -> None:
        """Deploy the ingress and go on: ``tick`` says when it runs. Waiting here for it to run could wait forever:
        a replica that starts while the store is down, and finds a new revision when it is back, waits for that
        revision's model applications, which only ``tick`` deploys."""
        # a Deployment (@serve.deployment): mypy keeps a decorated class's own type
        app = Ingress.options(**self.ingress).bind(self.env)  # type: ignore[attr-defined]
        target = serve.RunTarget(target=app, name=ingress_app(self.service_id), route_prefix="/")
        serve.run_many([target], wait_for_applications_running=False)
        log.info("deploying the ingress %s", ingress_app(self.service_id))

    def _delete_unrouted(self) -> None:
        running = self.running()
        self._deleting &= running  # gone for good: a spec that comes back later is deployed anew
        leaving = running - set(self.desired)
        if not leaving:
            return
        instances = [i for i in self.store.list_instances(self.service_id) if i.state.get("role") == ROLE]
        if any(i.revision != self.applied for i in instances):
            return  # an ingress replica still moves to the head revision
        routed = {app for i in instances for app in i.state.get("ray_apps", ())}
        for app in sorted(leaving - routed - self._deleting):
            self._deleting.add(app)
            serve.delete(app, _blocking=False)
            log.info("revision %s: deleting %s (no ingress routes to it)", self.applied, app)

    def delete_all(self) -> None:
        """Delete the ingress and every model application of the service (``ferry serve --ray`` stopping)."""
        for app in sorted(self.running()) + [ingress_app(self.service_id)]:
            serve.delete(app, _blocking=False)
        if self.instance_id:
            self.store.remove_instance(self.instance_id)


def _check_http(host: str, port: int) -> None:
    """Ray Serve's HTTP address is the cluster's: one already running elsewhere keeps its own. Say so."""
    from ray.serve.context import _get_global_client

    from ferry.errors import InvalidInput

    client = _get_global_client()  # raises when no controller runs: None only when asked not to raise
    assert client is not None
    config = client.http_config
    if (config.host, config.port) != (host, port):
        raise InvalidInput(
            f"Ray Serve on this cluster already answers HTTP on {config.host}:{config.port} (the address is the "
            f"cluster's, not an application's): use --host {config.host} --port {config.port}, or stop Serve "
            "first (`serve shutdown -y`)"
        )


def serve_state(prefix: str) -> dict[str, Any]:
    """Application -> its status and, per deployment, its status and replica counts by state (from Serve)."""
    apps: dict[str, Any] = {}
    for name, app in serve.status().applications.items():
        if name == prefix or name.startswith(prefix + "-"):
            deployments = {
                deployment: {
                    "status": str(getattr(d.status, "value", d.status)),
                    "replicas": {str(getattr(k, "value", k)): n for k, n in d.replica_states.items()},
                }
                for deployment, d in app.deployments.items()
            }
            apps[name] = {"status": str(getattr(app.status, "value", app.status)), "deployments": deployments}
    return apps


def pace(settings: Settings) -> Pace:
    """The service's autoscaling pace from FERRY_RAY_* (aux ``ray.*`` delays win per version)."""
    return Pace(settings.ray_upscale_delay_s, settings.ray_downscale_delay_s, settings.ray_look_back_s)


def replica_env(settings: Settings, service_id: str, host: str) -> dict[str, str]:
    """What a replica needs to find the store, the artifacts and its service, and the address its metrics
    server binds (``--host``): FERRY_* as this process has them, given to each replica's constructor."""
    env = {k: v for k, v in os.environ.items() if k.startswith("FERRY_") or k.startswith("CLEARML_")}
    env.update(
        FERRY_STORE=settings.store_url(),
        FERRY_ARTIFACT_ROOT=settings.artifact_url(),
        FERRY_SERVICE=service_id,
        FERRY_HOST=host,
    )
    return env


def serve_on_ray(
    store: Store, service_id: str, address: str | None, host: str, port: int, ingress: dict[str, Any], stop: Stop
) -> None:
    """Connect to the cluster (``address``, else RAY_ADDRESS, else a local one), deploy, follow until ``stop``
    (SIGINT or SIGTERM); then delete the applications and disconnect, each step bounded (``DRAIN_S``, ``DELETE_S``).

    Ray's calls run in threads while the main thread waits for the signal: a deploy that waits for the store,
    or a cluster that does not answer, cannot hold the stop. Ray installs no SIGTERM handler of its own then.
    """
    from ferry.stopping import call_bounded

    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ray._private.worker").addFilter(_NoSigtermWarning())
    proxy_timeout = stop.call(_proxy_timeout, store, service_id, settings)
    launcher: Launcher | None = None
    failed: BaseException | None = None
    try:
        stop.call(ray.init, address, logging_level=logging.WARNING, log_to_driver=False)
        options = {"host": host, "port": port, "request_timeout_s": proxy_timeout}
        guard = proxy_guard.start_options(serve.start)  # a lost request answered 503, not Ray's bare 500
        stop.call(serve.start, http_options=options, logging_config=QUIET, **guard)
        stop.call(_check_http, host, port)
        launcher = running = Launcher(store, service_id, settings, ingress, host)
        stop.interrupt = False  # from here the main thread only waits
        stop.actions.append(lambda signum: running.stop())
        _, failed = stop.follow(lambda: _follow(running), "ferry launcher", DRAIN_S)
    finally:  # a failure, a stop while connecting, or the stop asked for: the applications go, bounded
        closing = (lambda: _close(launcher)) if launcher is not None else ray.shutdown
        closed = call_bounded("deleting the applications" if launcher else "disconnecting", closing, DELETE_S)
    if failed is not None:
        raise failed
    if not closed:
        stop.exit(stop.status, "stopped, though Ray did not confirm the deletes in time: see `serve status`")
    stop.done()


def _proxy_timeout(store: Store, service_id: str, settings: Settings) -> float | None:
    """Ray's proxy's request timeout: the longest of the service's request timeouts now, plus ``PROXY_MARGIN_S``."""
    from ferry.control.aux_config import queue_limits

    specs: Iterable[EndpointSpec]
    try:
        specs = store.get_revision(service_id).config.endpoints.values()
    except Exception as exc:  # the store away: the launcher says so next
        log.debug("reading the endpoints' request timeouts failed: %s", exc)
        specs = []
    timeouts = [queue_limits(spec.engine, spec.aux_config).request_timeout_s for spec in specs]
    longest = max([settings.request_timeout_s or 0.0, *(timeout or 0.0 for timeout in timeouts)])
    return longest + PROXY_MARGIN_S if longest else None


def _follow(launcher: Launcher) -> None:
    try:
        launcher.run()
    except BaseException:
        launcher.stop()
        raise


def _close(launcher: Launcher) -> None:
    launcher.delete_all()
    time.sleep(0.5)  # the deletes reach Serve's controller before this driver leaves
    ray.shutdown()


class _NoSigtermWarning(logging.Filter):
    """Ray warns that it set no SIGTERM handler when connected from a thread: ferry's own handles SIGTERM."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()
