"""``ferry serve --ray``: deploy the service on Ray Serve and keep its model deployments equal to the store.

The ingress application is deployed once; each endpoint version of the newest revision gets a model
application (``apps.model_app``). A new or changed version's application is deployed when its revision
appears; the ingress replicas wait for it to run and warm it before they route to it. An application
that left the revision is deleted once no live ingress replica routes to it any more.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

import ray
from ray import serve

from ferry.control.spec import EndpointSpec
from ferry.control.store import Store
from ferry.rayserve.apps import QUIET, Pace, colocated, ingress_app, model_app, model_options
from ferry.rayserve.engine import ROLE
from ferry.rayserve.ingress import Ingress
from ferry.rayserve.model import ModelStage
from ferry.serving.swap import with_triton_addresses
from ferry.settings import Settings

log = logging.getLogger(__name__)

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

    def run(self) -> None:
        """Deploy the models of the newest revision, then the ingress; follow the store until ``stop``."""
        self.instance_id = self.store.register_instance(self.service_id, socket.gethostname(), os.getpid())
        self.tick()
        self._deploy_ingress()
        while not self._stop.wait(min(self.settings.poll_interval, LAUNCHER_POLL_S)):
            try:
                self.tick()
            except Exception as exc:  # the store or Serve failing: the cluster keeps serving what it has
                log.warning("following the store failed: %s; the cluster serves what it has", exc)

    def stop(self) -> None:
        self._stop.set()

    def tick(self) -> None:
        """Deploy what a new head revision added or changed; every heartbeat interval, read Serve's state,
        delete what the revision dropped once nothing routes to it, and heartbeat."""
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
                target=ModelStage.options(**model_options(self.desired[app], self.pace)).bind(
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
        app = Ingress.options(**self.ingress).bind(self.env)
        serve.run(app, name=ingress_app(self.service_id), route_prefix="/")
        log.info("ingress %s running", ingress_app(self.service_id))

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

    config = _get_global_client().http_config
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
    store: Store, service_id: str, address: str | None, host: str, port: int, ingress: dict[str, Any]
) -> None:
    """Connect to the cluster (``address``, else RAY_ADDRESS, else a local one), deploy, follow; delete on exit."""
    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET)
    _check_http(host, port)
    launcher = Launcher(store, service_id, settings, ingress, host)
    signal.signal(signal.SIGTERM, lambda *_: launcher.stop())
    try:
        launcher.run()
    except KeyboardInterrupt:
        pass
    finally:
        launcher.delete_all()
        time.sleep(0.5)
        ray.shutdown()
