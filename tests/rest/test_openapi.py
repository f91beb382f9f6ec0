"""/openapi.json: a valid OpenAPI document (schemathesis loads every operation) that declares the error answers."""

from __future__ import annotations

import re

import httpx
import pytest
import schemathesis
from schemathesis.core.result import Ok

from ferry.rest.app import FerryApp
from ferry.rest.openapi import ERROR_STATUSES

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def document(service) -> dict:
    code = service.code("class Preprocess:\n    def process(self, d, s, c=None):\n        return d\n")
    service.add("echo", code=code)
    service.add("echo", version="2", code=code)
    service.control.add_canary(service.id, endpoint="split", weights=(1, 3), input_endpoint_prefix="echo")
    service.apply()
    transport = httpx.ASGITransport(app=FerryApp(service.plane))
    async with httpx.AsyncClient(transport=transport, base_url="http://ferry") as client:
        return (await client.get("/openapi.json")).json()


def invalid_operations(document: dict) -> list[str]:
    schema = schemathesis.openapi.from_dict(document)
    return [str(result.err()) for result in schema.get_all_operations() if not isinstance(result, Ok)]


async def test_schemathesis_loads_every_operation(document):
    assert set(document["paths"]) >= {
        "/serve/echo",
        "/serve/echo/2",
        "/serve/{endpoint}",
        "/serve/{endpoint}/{version}",
    }
    assert invalid_operations(document) == []


async def test_templated_paths_declare_their_parameters(document):
    post = document["paths"]["/serve/{endpoint}/{version}"]["post"]
    assert [(p["name"], p["in"], p["required"]) for p in post["parameters"]] == [
        ("endpoint", "path", True),
        ("version", "path", True),
    ]
    assert post["parameters"][0]["schema"]["examples"] == ["echo"]
    for path, operations in document["paths"].items():  # what `schemathesis run` reported as a schema error
        declared = {p["name"] for op in operations.values() for p in op.get("parameters", ()) if p["in"] == "path"}
        assert set(re.findall(r"\{(\w+)\}", path)) == declared, path


async def test_every_serve_operation_declares_the_error_answers_and_their_body(document):
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "kind"] and {"error", "kind", "id", "stage"} <= set(error["properties"])
    for path, operations in document["paths"].items():
        if path.startswith("/serve/openai/"):  # the OpenAI API's own error body
            for operation in operations.values():
                schema = operation["responses"]["400"]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/OpenAIError"}, path
        elif path.startswith("/serve/"):
            responses = operations["post"]["responses"]
            assert set(ERROR_STATUSES) <= set(responses), path
            for status in ERROR_STATUSES:
                schema = responses[status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)
    assert set(ERROR_STATUSES) >= {"400", "401", "403", "404", "405", "413", "422", "500", "503", "504"}


async def test_canaries_are_documented_with_their_split_and_routing_key(document):
    operation = document["paths"]["/serve/split"]["post"]
    assert operation["description"] == "split by weights [1.0, 3.0] over the newest versions of echo"
    assert operation["parameters"][0]["name"] == "X-Ferry-Routing-Key"
    assert not invalid_operations(document)
