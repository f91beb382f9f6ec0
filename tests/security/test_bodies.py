"""Hostile request bodies: gzip member floods and bombs, deep JSON, odd encodings and paths.

What a hostile body costs is judged by the event loop's work on it: the CPU time of the longest callback
the loop ran while the request was answered (``time.thread_time``, the loop thread's own CPU), so a busy
machine cannot make the test pass or fail by itself.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from ferry.rest.app import FerryApp
from ferry.rest.encoding import MAX_MEMBERS

pytestmark = pytest.mark.anyio
LOOP_BUDGET_S = 0.050
"""The most work one event-loop callback may do on a hostile body."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ECHO = """
class Preprocess:
    def preprocess(self, body, state, collect=None):
        return {"type": type(body).__name__, "len": len(body) if body is not None else None}
    def process(self, data, state, collect=None):
        return data
"""
LIMIT = 64 << 20  # ferry serve's default body limit (FERRY_MAX_BODY_MB)


@pytest.fixture
def client(service):
    service.add("echo", code=service.code(ECHO))
    service.apply()
    app = FerryApp(service.plane, max_body=LIMIT)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ferry", timeout=120)


@contextmanager
def loop_work() -> Iterator[list[float]]:
    """Record the CPU seconds of the longest event-loop callback run inside the block (``[worst]``)."""
    worst = [0.0]
    run = asyncio.events.Handle._run

    def timed(handle: asyncio.events.Handle) -> None:
        started = time.thread_time()
        try:
            run(handle)
        finally:
            worst[0] = max(worst[0], time.thread_time() - started)

    asyncio.events.Handle._run = timed
    try:
        yield worst
    finally:
        asyncio.events.Handle._run = run


async def post(client: httpx.AsyncClient, body: bytes, encoding: str, ctype: str = "application/octet-stream"):
    headers = {"Content-Encoding": encoding, "Content-Type": ctype}
    with loop_work() as worst:  # a task of its own: every step of the request is a callback measured
        answer = await asyncio.create_task(client.post("/serve/echo", content=body, headers=headers))
    return answer, worst[0]


async def test_a_flood_of_empty_gzip_members_is_refused_at_once(client):
    # 120,000 empty members (2.4 MB) took ~4 s of event-loop time before: each member copied the rest.
    answer, worst = await post(client, gzip.compress(b"", mtime=0) * 120_000, "gzip")
    assert answer.status_code == 400
    assert f"more than {MAX_MEMBERS} gzip members" in answer.json()["error"]
    assert worst < LOOP_BUDGET_S, f"the loop spent {worst * 1000:.1f} ms of CPU in one callback"


async def test_members_up_to_the_limit_are_one_body(client):
    body = b"".join(gzip.compress(b"ab", mtime=0) for _ in range(MAX_MEMBERS))
    answer, _ = await post(client, body, "gzip")
    assert answer.status_code == 200 and answer.json() == {"type": "bytes", "len": 2 * MAX_MEMBERS}


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_bomb_is_413_without_holding_the_loop(client, encoding):
    packed = (
        gzip.compress(b"\0" * (LIMIT + 1024), mtime=0) if encoding == "gzip" else zlib.compress(b"\0" * (LIMIT + 1))
    )
    assert len(packed) < 100_000  # about 1000:1
    answer, worst = await post(client, packed, encoding)
    assert answer.status_code == 413 and "inflated request body is over the limit" in answer.json()["error"]
    assert worst < LOOP_BUDGET_S, f"the loop spent {worst * 1000:.1f} ms of CPU in one callback"


async def test_a_large_body_within_the_limit_inflates_off_the_loop(client):
    answer, worst = await post(client, gzip.compress(b"\1" * (48 << 20), mtime=0), "gzip")
    assert answer.status_code == 200 and answer.json() == {"type": "bytes", "len": 48 << 20}
    assert worst < LOOP_BUDGET_S, f"the loop spent {worst * 1000:.1f} ms of CPU in one callback"


@pytest.mark.parametrize(
    ("body", "encoding", "status", "text"),
    [
        (zlib.compress(b'{"a": 1}'), "deflate", 200, None),
        (zlib.compress(b'{"a": 1}') + b"junk", "deflate", 400, "data follows the end of the deflate stream"),
        (gzip.compress(b'{"a": 1}', mtime=0), "GZIP", 200, None),
        (b'{"a": 1}', "identity", 200, None),
        (b'{"a": 1}', "br", 415, "Content-Encoding 'br' is not supported: send gzip, deflate or identity"),
        (gzip.compress(b'{"a": 1}', mtime=0)[:-3], "gzip", 400, "the stream is truncated"),
        (b"", "gzip", 400, "the stream is truncated"),
    ],
    ids=["deflate", "deflate+junk", "GZIP", "identity", "br", "gzip-cut", "gzip-empty"],
)
async def test_encodings(client, body, encoding, status, text):
    answer, _ = await post(client, body, encoding, "application/json")
    assert answer.status_code == status, answer.text
    assert text is None or text in answer.json()["error"]


async def test_deep_json_is_400(client):
    deep = b"[" * 100_000 + b"]" * 100_000
    answer = await client.post("/serve/echo", content=deep, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
    answer = await client.post("/serve/echo", content=b"[" * 500 + b"]" * 500)
    assert answer.status_code == 200  # well within the parser's depth of 1024


@pytest.mark.parametrize(
    ("ctype", "body", "arrives_as"),
    [
        ("application/json", b'{"a": 1}', "dict"),
        ("application/vnd.api+json", b'{"a": 1}', "dict"),
        ("", b'{"a": 1}', "dict"),
        ("application/x-www-form-urlencoded", b'{"a": 1}', "dict"),  # curl -d's default type
        ("application/x-www-form-urlencoded", b"a=1&b=2", "bytes"),
        ("text/plain", b'{"a": 1}', "bytes"),  # README: other content types reach preprocess as bytes
        ("image/jpeg", b"\xff\xd8", "bytes"),
    ],
)
async def test_content_types_do_what_readme_says(client, ctype, body, arrives_as):
    answer = await client.post("/serve/echo", content=body, headers={"Content-Type": ctype} if ctype else {})
    assert answer.status_code == 200 and answer.json()["type"] == arrives_as


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "GET"])
@pytest.mark.parametrize("path", ["/foo", "/v2/foo", "/health", "/serve"])
async def test_unknown_paths_are_404_whatever_the_method(client, method, path):
    answer = await client.request(method, path, content=b"{}")
    assert answer.status_code == 404, (method, path, answer.text)
    assert "no route" in answer.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/health/live", "GET"),
        ("PUT", "/metrics", "GET"),
        ("GET", "/serve/echo", "POST"),
        ("POST", "/v2", "GET"),
    ],
)
async def test_known_paths_with_the_wrong_method_are_405(client, method, path, allowed):
    answer = await client.request(method, path)
    assert answer.status_code == 405 and answer.headers["allow"] == allowed
