"""The server, assembled: store, registry, metrics, data plane and reconciler from FERRY_* settings, with
its faces (HTTP, and gRPC when asked). ``ferry serve`` (uvicorn's factory, in each worker process) and a
Ray Serve ingress replica (with the reconciler that runs models on their deployments) both call
``create_app``; nothing else builds one.
"""

from __future__ import annotations

import logging
import sys

from ferry.console.pages import ConsoleRoutes
from ferry.console.views import Views
from ferry.console.writes import Gate, Writes, form_secret
from ferry.control.service import ServiceControl
from ferry.control.store import Store
from ferry.db import make_sql_engine
from ferry.metrics.collectors import Metrics
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry
from ferry.rest.app import FerryApp, PagesApp
from ferry.rest.auth import BearerAuth
from ferry.serving.request.dataplane import DataPlane
from ferry.serving.revisions.reconciler import Reconciler
from ferry.settings import Settings
from ferry.tokens import load_tokens


def create_console_app() -> PagesApp:
    """``ferry console``: the web console over the store of FERRY_* settings, for every service, no models loaded."""
    settings = Settings()
    store, artifacts, registry = _stores(settings, progress=False)
    tokens, admins = _token_sets(settings)
    auth = BearerAuth(tokens, admins) if tokens else None
    return PagesApp(_console(settings, store, registry, artifacts, admins, auth, chat=False), auth)


def _stores(settings: Settings, progress: bool) -> tuple[Store, ArtifactStore, ModelRegistry]:
    """Logging set up, then the store (not reached yet: it may be down), the artifacts and the registry."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store(make_sql_engine(settings.store_url(), create_tables=False))
    artifacts = ArtifactStore(settings.artifact_url(), settings.cache_path(), progress=progress)
    return store, artifacts, ModelRegistry(store.sql, artifacts)


def _token_sets(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """The serve tokens and the admin tokens, each token with its holder's name."""
    tokens = load_tokens(settings.serve_tokens, settings.serve_tokens_file)
    return tokens, load_tokens(settings.admin_tokens, settings.admin_tokens_file, "FERRY_ADMIN_TOKENS")


def _console(
    settings: Settings,
    store: Store,
    registry: ModelRegistry,
    artifacts: ArtifactStore,
    admins: dict[str, str],
    auth: BearerAuth | None,
    chat: bool = True,
) -> ConsoleRoutes:
    writes = Writes(ServiceControl(store, registry, artifacts))
    gate, can_read = Gate.of(admins, form_secret()), auth.known if auth else None
    return ConsoleRoutes(Views(store, registry), writes, gate, can_read, settings.heartbeat_interval, chat)


def create_app(reconciler_cls: type[Reconciler] = Reconciler) -> FerryApp:
    """The app for this process, from FERRY_* settings. Nothing here may need the store: it can be down when
    a worker starts (the reconciler waits for it)."""
    settings = Settings()
    store, artifacts, registry = _stores(settings, progress=sys.stderr.isatty())
    plane = DataPlane(request_timeout_s=settings.request_timeout_s, metrics=Metrics() if settings.metrics else None)
    reconciler = reconciler_cls(
        plane, store, registry, artifacts, settings.service, settings.poll_interval, settings.heartbeat_interval
    )
    reconciler.swap.drain_timeout = settings.drain_timeout_s
    tokens, admins = _token_sets(settings)
    max_body = int(settings.max_body_mb * (1 << 20))
    app = FerryApp(plane, reconciler, max_body, settings.startup_timeout, tokens, admins)
    app.pages = _console(settings, store, registry, artifacts, admins, app.auth)
    if settings.grpc_port:
        from ferry.grpc import address
        from ferry.grpc.server import GrpcFace  # grpcio and tritonclient: the ferry[triton] extra

        where = address(settings.host, settings.grpc_port)
        app.faces.append(GrpcFace(plane, where, app.auth, app.readiness, max_body))
    return app
