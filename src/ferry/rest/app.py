"""The ASGI app: /serve routes, health, OpenAPI; lifespan runs the reconciler beside the server."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import orjson

from ferry.errors import EngineError, FerryError, NotFound, UserCodeError
from ferry.rest.http import decode_body, read_body, send, send_error
from ferry.rest.openapi import DOCS_HTML, openapi
from ferry.serving.dataplane import DataPlane, dumps
from ferry.serving.reconciler import Reconciler

log = logging.getLogger(__name__)
SERVE = "/serve/"


class FerryApp:
    """A plain ASGI app: the request path stays short; the reconciler runs in its lifespan."""

    def __init__(
        self,
        plane: DataPlane,
        reconciler: Reconciler | None = None,
        max_body: int = 64 << 20,
        startup_timeout: float = 120.0,
    ) -> None:
        self.plane = plane
        self.startup_timeout = startup_timeout
        self.reconciler = reconciler
        self.max_body = max_body
        self._task: asyncio.Task | None = None

    async def __call__(self, scope: dict, receive: Any, send_: Any) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send_)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send_)

    async def _http(self, scope: dict, receive: Any, send_: Any) -> None:
        path, method = scope["path"], scope["method"]
        try:
            if path.startswith(SERVE):
                if method != "POST":
                    return await _method_not_allowed(send_, "POST")
                return await self._serve(scope, receive, send_, path[len(SERVE) :])
            if method not in ("GET", "HEAD"):
                return await _method_not_allowed(send_, "GET")
            await self._get(path, send_)
        except FerryError as exc:
            await send_error(send_, exc)
        except Exception as exc:  # a bug: answer 500 and keep serving
            log.exception("unexpected error on %s %s", method, path)
            await send_error(send_, EngineError(f"internal error: {type(exc).__name__}: {exc}"))

    async def _serve(self, scope: dict, receive: Any, send_: Any, rest: str) -> None:
        endpoint, version = _split(rest)
        body = decode_body(scope, await read_body(scope, receive, self.max_body), self.max_body)
        result = await self.plane.infer(endpoint, version, body)
        if isinstance(result, (bytes, bytearray)):
            return await send(send_, 200, bytes(result), b"application/octet-stream")
        try:
            payload = dumps(result)
        except TypeError as exc:
            raise UserCodeError(
                f"endpoint {endpoint}: postprocess returned a value that is not JSON: {exc}", stage="postprocess"
            ) from None
        await send(send_, 200, payload)

    async def _get(self, path: str, send_: Any) -> None:
        if path == "/health/live":
            return await send(send_, 200, b'{"status":"live"}')
        if path == "/health/ready":
            ready = self.plane.ready()
            body = {"status": "ready" if ready else "loading", "revision": self.plane.table.revision}
            return await send(send_, 200 if ready else 503, orjson.dumps(body))
        if path == "/openapi.json":
            return await send(send_, 200, orjson.dumps(openapi(self.plane.table)))
        if path in ("/docs", "/docs/"):
            return await send(send_, 200, DOCS_HTML, b"text/html; charset=utf-8")
        raise NotFound(f"no route {path}: POST /serve/<endpoint>[/<version>], GET /health/ready, /docs")

    async def _lifespan(self, receive: Any, send_: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.plane.loop = asyncio.get_running_loop()
                if self.reconciler is not None:
                    self._task = asyncio.create_task(self.reconciler.run())
                    # Take no traffic before the first revision is loaded (bounded, then serve 503s for the rest).
                    await asyncio.to_thread(self.plane.loaded_once.wait, self.startup_timeout)
                await send_({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.reconciler is not None and self._task is not None:
                    self.reconciler.stop()
                    await self._task
                self.plane.close()
                await send_({"type": "lifespan.shutdown.complete"})
                return


def _split(rest: str) -> tuple[str, str | None]:
    parts = rest.split("/")
    if parts and parts[-1] == "":
        parts.pop()
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise NotFound(f"no route /serve/{rest}: use /serve/<endpoint> or /serve/<endpoint>/<version>")


async def _method_not_allowed(send_: Any, allowed: str) -> None:
    body = orjson.dumps({"error": f"method not allowed: use {allowed}", "kind": "MethodNotAllowed"})
    await send(send_, 405, body, extra=[(b"allow", allowed.encode())])


def create_app() -> FerryApp:
    """Build the app from FERRY_* settings (uvicorn's factory: each worker process calls it)."""
    from ferry.control.store import Store
    from ferry.registry.artifacts import ArtifactStore
    from ferry.registry.models import ModelRegistry
    from ferry.settings import Settings

    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store.open(settings.store_url())
    artifacts = ArtifactStore(settings.artifact_url(), settings.cache_path(), progress=sys.stderr.isatty())
    registry = ModelRegistry(store.engine, artifacts)
    service = store.resolve_service(settings.service or None)
    plane = DataPlane()
    reconciler = Reconciler(
        plane, store, registry, artifacts, service.id, settings.poll_interval, settings.heartbeat_interval
    )
    return FerryApp(plane, reconciler, int(settings.max_body_mb * (1 << 20)), settings.startup_timeout)
