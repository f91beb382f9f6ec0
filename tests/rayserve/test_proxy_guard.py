"""The guard in Ray's HTTP proxy: a request the proxy ended without an answer (its replica died) gets 503 with
Retry-After in ferry's error shape; answers that started pass through untouched."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from ferry.rayserve import proxy_guard
from ferry.rayserve.proxy_guard import AnswerLost


async def dropped(scope, receive, send) -> None:
    """Ray's proxy after a RayActorError: it returns without sending anything."""


async def failing(scope, receive, send) -> None:
    raise RuntimeError("the proxy itself failed")


async def answering(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 418, "headers": [(b"x-kept", b"yes")]})
    await send({"type": "http.response.body", "body": b"teapot"})


async def failing_midway(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise RuntimeError("lost after the answer started")


def post(app) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=AnswerLost(app), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ray") as client:
            return await client.post("/serve/m", json={"x": 1})

    return asyncio.run(go())


@pytest.mark.parametrize("app", [dropped, failing], ids=["ended-without-answer", "proxy-raised"])
def test_a_request_left_without_an_answer_gets_503_to_retry(app):
    response = post(app)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    body = orjson.loads(response.content)
    assert body["kind"] == "ReplicaLost" and "retry" in body["error"]


def test_an_answer_that_started_passes_untouched():
    response = post(answering)
    assert (response.status_code, response.content, response.headers["x-kept"]) == (418, b"teapot", "yes")
    with pytest.raises(RuntimeError, match="after the answer started"):  # the server closes that connection
        asyncio.run(AnswerLost(failing_midway)({"type": "http"}, None, sink))


async def sink(message: dict) -> None:
    assert message["type"] == "http.response.start" and message["status"] == 200  # nothing sent after it


def test_the_launcher_installs_the_guard_where_serve_start_takes_controller_options():
    def new_start(http_options=None, controller_options=None): ...

    def old_start(http_options=None): ...

    env = proxy_guard.start_options(new_start)["controller_options"]["runtime_env"]["env_vars"]
    assert env == {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "ferry.rayserve.proxy_guard.middlewares"}
    assert proxy_guard.start_options(old_start) == {}
    (middleware,) = proxy_guard.middlewares()  # what Ray's proxy imports through that path
    assert middleware.cls is AnswerLost
