"""The ASGI app in-process through httpx: routes, bodies, errors mapped to status codes, health, docs."""

from __future__ import annotations

import gzip

import httpx
import numpy as np
import pytest

from ferry.rest.app import FerryApp

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ECHO = """
    import numpy as np
    class Preprocess:
        def preprocess(self, body, state, collect=None):
            return {"type": type(body).__name__, "len": len(body) if body is not None else None, "body": body
                    if not isinstance(body, bytes) else None}
        def process(self, data, state, collect=None):
            return data
        def postprocess(self, data, state, collect=None):
            data["array"] = np.arange(3, dtype=np.float32)
            data["scalar"] = np.int64(7)
            return data
"""


@pytest.fixture
def client(service):
    service.add("echo", code=service.code(ECHO))
    service.add("echo", version="2", code=service.code(ECHO))
    service.add(
        "raw",
        code=service.code("class Preprocess:\n    def process(self, d, s, c=None):\n        return b'\\x00\\x01'\n"),
    )
    service.add(
        "boom",
        code=service.code(
            "class Preprocess:\n    def process(self, d, s, c=None):\n        raise ValueError('bad value')\n"
        ),
    )
    service.add(
        "odd", code=service.code("class Preprocess:\n    def process(self, d, s, c=None):\n        return object()\n")
    )
    service.apply()
    app = FerryApp(service.plane, max_body=1000)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ferry")


async def test_serve_routes_and_numpy_answers(client):
    for path in ("/serve/echo", "/serve/echo/", "/serve/echo/2", "/serve/echo/2/"):
        r = await client.post(path, json={"a": 1})
        assert r.status_code == 200, path
        assert r.json() == {"type": "dict", "len": 1, "body": {"a": 1}, "array": [0.0, 1.0, 2.0], "scalar": 7}


async def test_non_json_body_reaches_preprocess_as_bytes(client):
    r = await client.post("/serve/echo", content=b"\xff\xd8jpeg", headers={"Content-Type": "image/jpeg"})
    assert r.json()["type"] == "bytes" and r.json()["len"] == 6


async def test_curl_default_form_type_with_json_is_json(client):
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    r = await client.post("/serve/echo", content=b'{"text": "hi"}', headers=headers)
    assert r.json()["body"] == {"text": "hi"}


async def test_gzip_body_is_inflated(client):
    body = gzip.compress(b'{"z": [1, 2, 3]}')
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    r = await client.post("/serve/echo", content=body, headers=headers)
    assert r.json()["body"] == {"z": [1, 2, 3]}


async def test_bytes_answer_is_octet_stream(client):
    r = await client.post("/serve/raw", json={})
    assert r.content == b"\x00\x01" and r.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "text"),
    [
        ("/serve/nope", {"json": {}}, 404, "served endpoints: boom, echo, echo/2, odd, raw"),
        ("/serve/echo/9", {"json": {}}, 404, "no endpoint 'echo/9'"),
        ("/serve/a/b/c", {"json": {}}, 404, "/serve/<endpoint>/<version>"),
        ("/serve/echo", {"content": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
        ("/serve/echo", {"content": b"x" * 1001}, 413, "over the limit of 1000 bytes"),
        ("/serve/echo", {"content": gzip.compress(b"0" * 5000), "headers": {"Content-Encoding": "gzip"}}, 413,
         "inflated"),
        ("/serve/echo", {"content": b"junk", "headers": {"Content-Encoding": "gzip"}}, 400, "not valid gzip"),
        ("/serve/boom", {"json": {}}, 422, "endpoint boom: process raised ValueError: bad value"),
        ("/serve/odd", {"json": {}}, 422, "not JSON"),
    ],
)  # fmt: skip
async def test_errors_are_4xx_with_a_message(client, path, kwargs, status, text):
    r = await client.post(path, **kwargs)
    assert r.status_code == status
    assert text in r.json()["error"]


async def test_wrong_method_is_405(client):
    r = await client.get("/serve/echo")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


async def test_health_and_docs(client, service):
    assert (await client.get("/health/live")).json() == {"status": "live"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["revision"] == service.store.head(service.id)
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and "/serve/echo/2" in doc["paths"]
    page = await client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    assert (await client.get("/nothing")).status_code == 404


async def test_not_ready_is_503_with_retry_after(service):
    app = FerryApp(service.plane)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ferry") as client:
        assert (await client.get("/health/ready")).status_code == 503
        import dataclasses

        service.plane.swap(dataclasses.replace(service.plane.table, loading=frozenset({"soon"})))
        r = await client.post("/serve/soon", json={})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_numpy_types_serialise():
    from ferry.serving.request.dataplane import dumps

    assert dumps({"a": np.float64(1.5), "b": np.array([[1, 2]]), "c": (1, 2)}) == b'{"a":1.5,"b":[[1,2]],"c":[1,2]}'
