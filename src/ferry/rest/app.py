"""The ASGI app: /serve and /v2 routes, health, OpenAPI; lifespan runs the reconciler beside the server.

It is built from its parts in ``ferry/server.py`` (``create_app``), which every way of serving calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Any, Protocol

import orjson

from ferry.errors import EngineError, FerryError, Forbidden, NotFound, NotReady, UserCodeError
from ferry.rest.auth import BearerAuth
from ferry.rest.http import decode_body, header, read_body, send, send_error
from ferry.rest.openai import PREFIX as OPENAI
from ferry.rest.openai import OpenAIRoutes, is_openai, stream_events
from ferry.rest.openapi import DOCS_CSP, DOCS_HTML, openapi
from ferry.rest.v2 import V2Routes, is_v2
from ferry.serving.request.dataplane import DataPlane, dumps
from ferry.serving.revisions.reconciler import Reconciler
from ferry.streams import Stream

log = logging.getLogger(__name__)
SERVE = "/serve/"
GRPC_GRACE_S = 1.0
"""Seconds in-flight gRPC calls get to finish when the server stops (after HTTP's drain; all within 5 s)."""
GET_ROUTES = frozenset(
    {"/health/live", "/health/ready", "/openapi.json", "/docs", "/docs/", "/metrics", "/metrics/targets"}
)
"""The paths this app answers to GET (other methods get 405 there, 404 elsewhere)."""
DOCS_HEADERS = ((b"content-security-policy", DOCS_CSP), (b"x-content-type-options", b"nosniff"))
CONSOLE_CHAT = "/console/chat"
"""The console's chat box posts here: the OpenAI chat route, reached with the console's login cookie (a page cannot
send a bearer header), and only with the header ``x-ferry-console``, which no other site's page may add without
this server's leave (a CORS preflight that it never grants), so no site can chat in a visitor's name."""
OPENAI_CHAT = OPENAI + "chat/completions"
ROUTING_KEY = b"x-ferry-routing-key"
"""A request carrying this header lands on the same canary target while the canary stays the same."""


class Face(Protocol):
    """Another way in served beside HTTP on the same loop (grpc/server.py ``GrpcFace``)."""

    def bind(self) -> None:
        """Take its port (FerryError when it cannot): at startup, before the first load."""

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


class Pages(Protocol):
    """Pages served beside the API under their own prefix (console/pages.py ``ConsoleRoutes``)."""

    def owns(self, path: str) -> bool: ...

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        """Answer a request; ``send(status, body, content_type, headers)`` writes it. It answers its own errors."""


class FerryApp:
    """A plain ASGI app: the request path stays short; the reconciler runs in its lifespan."""

    def __init__(
        self,
        plane: DataPlane,
        reconciler: Reconciler | None = None,
        max_body: int = 64 << 20,
        startup_timeout: float = 120.0,
        tokens: Collection[str] = (),
        console_tokens: Collection[str] = (),
    ) -> None:
        """``tokens`` lock every route but the probes; ``console_tokens`` (admin tokens) also open the console."""
        self.pages: Pages | None = None
        """The web console, when the server has one: GET pages under its prefix, with the serve tokens' access."""
        self.faces: list[Face] = []
        """Other ways in served on this app's loop (the KServe V2 gRPC face): bound at startup, opened with it."""
        self.auth = BearerAuth(tokens, console_tokens) if tokens else None  # None: open, one `if` per request
        self.plane = plane
        self.startup_timeout = startup_timeout
        self.reconciler = reconciler
        self.max_body = max_body
        self.v2 = V2Routes(plane, self.readiness, max_body)
        self.openai = OpenAIRoutes(plane, max_body)
        self._task: asyncio.Task | None = None

    async def __call__(self, scope: dict, receive: Any, send_: Any) -> None:
        """HTTP requests are served in this coroutine itself: a coroutine per request fewer than a dispatch."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send_)
            return
        scope = _unprefixed(scope)
        if self.auth is not None and not await self.auth.admit(scope, send_):
            return
        path, method = scope["path"], scope["method"]
        try:
            if path.startswith(SERVE):
                if is_openai(path):
                    return await self.openai.handle(scope, receive, send_)
                if method != "POST":
                    return await _method_not_allowed(send_, "POST")
                return await self._serve(scope, receive, send_, path[len(SERVE) :])
            if is_v2(path):
                return await self.v2.handle(scope, receive, send_)
            if path == CONSOLE_CHAT and self.pages is not None:
                return await self._chat(scope, receive, send_)
            if self.pages is not None and self.pages.owns(path):
                return await self.pages.handle(scope, receive, lambda *answer: send(send_, *answer))
            if method not in ("GET", "HEAD"):
                if path not in GET_ROUTES:
                    raise _no_route(path)
                return await _method_not_allowed(send_, "GET")
            await self._get(path, send_)
        except FerryError as exc:
            await send_error(send_, exc)
        except asyncio.CancelledError:  # the server's drain ended (or Ray dropped the request): say so, and end
            stopped = NotReady(f"ferry stopped before it answered {method} {path}: send it again", retry_after=1)
            with contextlib.suppress(Exception):  # the connection may be gone already
                await send_error(send_, stopped)
        except Exception as exc:  # a bug: answer 500 and keep serving
            error = EngineError(f"internal error on {method} {path}: {type(exc).__name__}: {exc}")
            error.__cause__ = exc  # send_error logs it with this traceback and answers only an id
            await send_error(send_, error)

    async def _chat(self, scope: dict, receive: Any, send_: Any) -> None:
        """The console's chat box: its message goes to the OpenAI chat route as if sent there (the token check
        took the login cookie, as for every console path)."""
        if not header(scope, b"x-ferry-console"):
            raise Forbidden(f"{CONSOLE_CHAT} is the console's chat box: it takes the header x-ferry-console")
        await self.openai.handle({**scope, "path": OPENAI_CHAT}, receive, send_)

    async def _serve(self, scope: dict, receive: Any, send_: Any, rest: str) -> None:
        endpoint, version = _split(rest)
        try:
            body = decode_body(scope, await read_body(scope, receive, self.max_body))
        except FerryError as exc:
            self.plane.unrouted(endpoint, exc.status_code)
            raise
        result = await self.plane.infer(endpoint, version, body, header(scope, ROUTING_KEY) or None)
        if type(result) is Stream:  # an LLM endpoint asked with "stream": server-sent events
            return await stream_events(result, receive, send_)
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
            status, reason = self.readiness()
            body = {"status": status, "revision": self.plane.table.revision, **({"reason": reason} if reason else {})}
            return await send(send_, 200 if status == "ready" else 503, orjson.dumps(body))
        if path == "/openapi.json":
            return await send(send_, 200, orjson.dumps(openapi(self.plane.table)))
        if path in ("/docs", "/docs/"):
            return await send(send_, 200, DOCS_HTML, b"text/html; charset=utf-8", DOCS_HEADERS)
        if path == "/metrics":
            return await self._metrics(send_)
        if path == "/metrics/targets" and self.reconciler is not None:
            return await send(send_, 200, orjson.dumps(await asyncio.to_thread(self.reconciler.metrics_targets)))
        raise _no_route(path)

    async def _metrics(self, send_: Any) -> None:
        metrics = self.plane.metrics
        if metrics is None:
            raise NotFound("metrics are off in this server: start `ferry serve` without --no-metrics (FERRY_METRICS)")
        self.plane.refresh_metrics()
        body, ctype = await asyncio.to_thread(metrics.render)  # with --workers N it reads every worker's files
        await send(send_, 200, body, ctype.encode())

    def readiness(self) -> tuple[str, str | None]:
        """("ready", None), or ("loading" | "unavailable", why): what /health/ready answers."""
        if self._task is not None and self._task.done() and not self._task.cancelled() and self._task.exception():
            return "unavailable", f"the reconciler stopped: {self._task.exception()!r}; restart `ferry serve`"
        if self.reconciler is not None:
            return self.reconciler.health()
        return ("ready", None) if self.plane.ready() else ("loading", "no revision loaded yet")

    async def _first_load(self, task: asyncio.Task) -> None:
        """Take no traffic before the first revision is loaded (bounded: then 503s that say why, until it is)."""
        waiting = asyncio.ensure_future(asyncio.to_thread(self.plane.loaded_once.wait, self.startup_timeout))
        await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
        if not self.plane.ready():
            log.warning("taking traffic unready; /health/ready answers 503 until ready: %s", self.readiness()[1])

    async def _lifespan(self, receive: Any, send_: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.plane.loop = asyncio.get_running_loop()
                if not await self._bind_faces(send_):
                    return
                if self.reconciler is not None:
                    self._task = asyncio.create_task(self.reconciler.run(), name="ferry reconciler")
                    self._task.add_done_callback(_log_crash)
                    await self._first_load(self._task)
                for face in self.faces:
                    await face.start()  # after the first load, as uvicorn opens the HTTP port
                await send_({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for face in self.faces:
                    await face.stop(GRPC_GRACE_S)  # in-flight calls finish first
                if self.reconciler is not None and self._task is not None:
                    self.reconciler.stop()
                    await asyncio.gather(self._task, return_exceptions=True)  # _log_crash has reported a crash
                self.plane.close()
                if self.plane.metrics is not None:
                    self.plane.metrics.close()
                await send_({"type": "lifespan.shutdown.complete"})
                return

    async def _bind_faces(self, send_: Any) -> bool:
        """Bind the other faces' ports before anything starts; one that cannot bind fails the startup, in one line."""
        try:
            for face in self.faces:
                face.bind()
        except FerryError as exc:
            await send_({"type": "lifespan.startup.failed", "message": str(exc)})
            return False
        return True


class PagesApp:
    """An ASGI app that serves only ``pages`` (``ferry console``: the web console without a data plane)."""

    def __init__(self, pages: Pages, auth: BearerAuth | None = None) -> None:
        self.pages = pages
        self.auth = auth

    async def __call__(self, scope: dict, receive: Any, send_: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":  # startup: nothing to start
                await send_({"type": "lifespan.startup.complete"})
            return await send_({"type": "lifespan.shutdown.complete"})
        if scope["type"] != "http":
            return
        scope = _unprefixed(scope)
        if self.auth is not None and not await self.auth.admit(scope, send_):
            return
        if scope["path"] in ("", "/"):
            where = (scope.get("root_path", "").rstrip("/") + "/console/").encode()
            return await send(send_, 303, b"", b"text/plain", [(b"location", where)])
        if scope["path"] in ("/health/live", "/health/ready"):
            return await send(send_, 200, b'{"status":"live"}')
        if not self.pages.owns(scope["path"]):
            return await send_error(
                send_, NotFound(f"no route {scope['path']}: this server has the console only, at /console/")
            )
        await self.pages.handle(scope, receive, lambda *answer: send(send_, *answer))


def _unprefixed(scope: dict) -> dict:
    """``scope`` routed on what follows the ``--root-path`` prefix (the same scope when there is none). uvicorn
    puts the prefix before the path it received, assuming the proxy took it off; a proxy that passed it on gives it
    twice, and both are taken off."""
    root, path = scope.get("root_path"), scope["path"]
    if not root or not path.startswith(root + "/"):
        return scope
    path = path[len(root) :]
    return {**scope, "path": path[len(root) :] if path.startswith(root + "/") else path}


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the reconciler stopped: %r; /health/ready answers 503 until ferry serve restarts", task.exception())


def _no_route(path: str) -> NotFound:
    return NotFound(f"no route {path}: POST /serve/<endpoint>[/<version>], GET /health/ready, /metrics, /docs, /v2")


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
