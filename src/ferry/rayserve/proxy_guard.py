"""An answer for every request that reaches Ray's HTTP proxy: 503 with Retry-After where its replica died first.

When the ingress replica holding a request dies (a node lost, a process killed), Ray's proxy ends the request
without a response and its server falls back to a bare 500, though nothing in ferry failed and a retry would
succeed on the other replica. This ASGI middleware wraps the proxy (Ray imports ``middlewares`` through
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, which the launcher sets on the Serve controller it starts, and the
proxies inherit) and answers such a request 503 with ``Retry-After: 1``, in ferry's error shape. Answers the
replica did start are passed through untouched; a client gone first gets nothing.
"""

from __future__ import annotations

import inspect
from typing import Any

import orjson

CALLBACK = "ferry.rayserve.proxy_guard.middlewares"
"""The import path Ray's proxy calls at start for its middleware list."""
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
LOST = (
    "the replica holding this request ended without answering it (its process or node was lost, or it failed: "
    "see the replica's log); retry, another replica takes it"
)


class AnswerLost:
    """Pass everything through; a request whose response never started is answered 503."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:  # the proxy failed the request: answered as lost below, unless its answer had started
            if started:
                raise
        if not started:
            await _lost(send)


async def _lost(send: Any) -> None:
    body = orjson.dumps({"error": LOST, "kind": "ReplicaLost"})
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"1"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def middlewares() -> list:
    """What Ray's proxy calls at start: the guard as a Starlette middleware."""
    from starlette.middleware import Middleware

    return [Middleware(AnswerLost)]


def start_options(start: Any) -> dict:
    """Keyword arguments for ``serve.start`` that install the guard in the proxies of a Serve it starts.

    A Ray without controller options (they came in 2026): there the guard comes only from the variable set on
    the cluster (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=ferry.rayserve.proxy_guard.middlewares ray start``).
    """
    if "controller_options" not in inspect.signature(start).parameters:
        return {}
    return {"controller_options": {"runtime_env": {"env_vars": {CALLBACK_ENV: CALLBACK}}}}
