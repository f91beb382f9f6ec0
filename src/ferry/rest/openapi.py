"""The OpenAPI document (one path per served endpoint) and the /docs page that renders it."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from ferry import __version__
from ferry.rest.openai_schema import OPENAI_ERROR, openai_paths
from ferry.serving.request.routing import RouteTable

ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
ERROR_STATUSES = {
    "400": "the body is not valid JSON, or not valid gzip/deflate under its Content-Encoding (or over 64 members)",
    "401": "a bearer token is required (the server runs with --token-file)",
    "403": "the bearer token is not accepted",
    "404": "no such endpoint or version on this service",
    "405": "the method is not allowed on this path (see the Allow header)",
    "413": "the body, or the body once inflated, is over the server's limit (FERRY_MAX_BODY_MB)",
    "415": "the Content-Encoding is not gzip, deflate or identity",
    "422": "the body parsed, but the endpoint cannot take it: the input spec (names, rank, shape, dtype), "
    "the model, or the endpoint's Preprocess code refused it; the message names the input and the stage",
    "500": "ferry failed; the answer carries an id to find the details in the server log",
    "503": "the endpoint is loading, being replaced, failed to load or has too many requests waiting; "
    "retry after Retry-After seconds",
    "504": "the endpoint did not answer within its request timeout",
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "kind"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong and what to do"},
        "kind": {"type": "string", "description": "ferry's error kind, e.g. InputMismatch, NotFound, NotReady"},
        "endpoint": {"type": "string"},
        "stage": {"type": "string", "description": "import, load, preprocess, model, process or postprocess"},
        "id": {"type": "string", "description": "5xx only: the id of the full error in the server log"},
    },
}
ROUTING_KEY = {
    "name": "X-Ferry-Routing-Key",
    "in": "header",
    "required": False,
    "description": "requests with the same key reach the same canary target while the canary is unchanged",
    "schema": {"type": "string"},
}
ERROR_HEADERS = {"405": ("Allow", "the allowed method"), "503": ("Retry-After", "seconds to wait")}


def openapi(table: RouteTable) -> dict[str, Any]:
    """The OpenAPI 3.1 document for what ``table`` serves: one path per endpoint plus the templated ones."""
    paths: dict[str, Any] = {
        "/health/live": _get("the process is up", {"200": {"description": "live"}}),
        "/health/ready": _get(
            "the current revision is loaded",
            {"200": {"description": "ready"}, "503": {"description": "loading or unavailable"}},
        ),
        "/metrics": _get(
            "Prometheus metrics of this server (docs/metrics.md)",
            {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "404": {"description": "metrics are off (ferry serve --no-metrics)"},
            },
        ),
    }
    for key, runtime in sorted(table.runtimes.items()):
        paths[f"/serve/{key}"] = {"post": _operation(key, runtime.spec)}
    for name, canary in sorted(table.canaries.items()):
        operation = _operation(f"canary {name}", None)
        operation["description"] = f"split by weights {list(canary.weights)} over " + (
            f"the newest versions of {canary.input_endpoint_prefix}"
            if canary.input_endpoint_prefix
            else ", ".join(canary.input_endpoints)
        )
        operation["parameters"] = [ROUTING_KEY]
        paths[f"/serve/{name}"] = {"post": operation}
    specs = [runtime.spec for runtime in table.runtimes.values()]
    endpoint = _path_parameter("endpoint", sorted({s.name for s in specs}))
    version = _path_parameter("version", sorted({s.version for s in specs if s.version}))
    paths["/serve/{endpoint}"] = {"post": _operation("any endpoint", None, [endpoint])}
    paths["/serve/{endpoint}/{version}"] = {"post": _operation("any endpoint version", None, [endpoint, version])}
    paths.update(_v2_paths(sorted({s.name for s in specs}), sorted({s.version for s in specs if s.version})))
    generating = sorted({rt.spec.name for rt in table.runtimes.values() if rt.generates})
    embedding = sorted({rt.spec.name for rt in table.runtimes.values() if rt.spec.aux_config.get("openai")})
    paths.update(openai_paths(generating, embedding))
    return {
        "openapi": "3.1.0",
        "info": {"title": "ferry", "version": __version__, "description": f"revision {table.revision}"},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA, "OpenAIError": OPENAI_ERROR, **V2_SCHEMAS}},
    }


V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                "FP64", "BYTES"]  # fmt: skip
PARAMETERS = {"type": "object", "description": "binary_data_size (inputs), binary_data (outputs), binary_data_output"}
V2_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"enum": V2_DATATYPES},
        "parameters": PARAMETERS,
        "data": {"description": "row-major values, flat or nested (BYTES as strings); absent for binary data"},
    },
}
V2_SCHEMAS = {
    "V2InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"description": "echoed in the answer"},
            "parameters": PARAMETERS,
            "inputs": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/V2Tensor"}},
            "outputs": {
                "type": "array",
                "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
            },
        },
    },
    "V2Tensor": V2_TENSOR,
    "V2InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"}, "outputs": {}},
    },
}
HEADER_LENGTH = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "the binary tensor extension: the JSON's length; binary tensor data follows it",
    "schema": {"type": "integer", "minimum": 0},
}


def _v2_paths(names: list[str], versions: list[str]) -> dict[str, Any]:
    """The Open Inference Protocol (KServe V2) routes, templated over model name and version."""
    name = _path_parameter("model_name", names)
    version = _path_parameter("model_version", versions)
    json_object = {"application/json": {"schema": {"type": "object"}}}
    paths: dict[str, Any] = {
        "/v2": _get("server metadata: name, version, extensions", _v2_responses(json_object)),
        "/v2/health/live": _get("the process is up", _v2_responses(json_object)),
        "/v2/health/ready": _get("the current revision is loaded (400: not yet)", _v2_responses(json_object)),
    }
    for prefix, parameters in (
        ("/v2/models/{model_name}", [name]),
        ("/v2/models/{model_name}/versions/{model_version}", [name, version]),
    ):
        paths[prefix] = _get("model metadata: inputs and outputs", _v2_responses(json_object))
        paths[f"{prefix}/ready"] = _get("the model is ready (400: loading or failed)", _v2_responses(json_object))
        paths[f"{prefix}/infer"] = {"post": _v2_infer()}
        for operations in (paths[prefix], paths[f"{prefix}/ready"], paths[f"{prefix}/infer"]):
            for operation in operations.values():
                operation["parameters"] = [*parameters, *operation.get("parameters", ())]
    return paths


def _v2_responses(ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "200": {"description": "ok", "content": ok},
        **{status: _error_response(status, text) for status, text in ERROR_STATUSES.items()},
    }


def _v2_infer() -> dict[str, Any]:
    """Only the model, on named tensors (no pre/post): JSON tensors, or the binary tensor extension."""
    answer = {
        "application/json": {"schema": {"$ref": "#/components/schemas/V2InferResponse"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }
    responses = _v2_responses(answer)
    responses["200"]["headers"] = {"Inference-Header-Content-Length": {"schema": {"type": "string"}}}
    return {
        "summary": "run the model on tensors (the Open Inference Protocol)",
        "parameters": [HEADER_LENGTH],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/V2InferRequest"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": responses,
    }


def _error_response(status: str, text: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": text, "content": ERROR_BODY}
    if status in ERROR_HEADERS:
        name, about = ERROR_HEADERS[status]
        response["headers"] = {name: {"description": about, "schema": {"type": "string"}}}
    return response


def _get(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": responses}}


def _path_parameter(name: str, examples: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", **({"examples": examples} if examples else {})}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _operation(key: str, spec: Any, parameters: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    description = ""
    if spec is not None:
        inputs = ", ".join(f"{t.name or '?'} {t.dtype or ''}{list(t.shape) if t.shape else ''}" for t in spec.inputs)
        description = f"engine {spec.engine}" + (f"; model inputs: {inputs}" if inputs else "")
    operation: dict[str, Any] = {
        "summary": f"infer with {key}",
        "description": description,
        "requestBody": {
            "content": {
                "application/json": {"schema": {}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }
        },
        "responses": {
            "200": {
                "description": "postprocess's answer: JSON, or bytes when postprocess returns bytes",
                "content": {
                    "application/json": {"schema": {}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **{status: _error_response(status, text) for status, text in ERROR_STATUSES.items()},
        },
    }
    if parameters:
        operation["parameters"] = list(parameters)
    return operation


DOCS_SCRIPT = """
const el = (tag, props) => Object.assign(document.createElement(tag), props);
fetch("/openapi.json").then(r => r.json()).then(doc => {
  document.querySelector("h1").textContent = `ferry ${doc.info.version} (${doc.info.description})`;
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const s = el("section", {});
      s.append(el("h3", {textContent: `${method.toUpperCase()} ${path}`}),
               el("p", {textContent: `${op.summary}. ${op.description || ""}`}));
      if (method === "post" && !path.includes("{")) {
        const body = el("textarea", {value: "{}"});
        const out = el("pre", {});
        const go = el("button", {textContent: "send"});
        go.onclick = () => fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
          body: body.value}).then(async r => out.textContent = `${r.status}\\n${await r.text()}`);
        s.append(body, go, out);
      }
      document.getElementById("paths").append(s);
    }
  }
});
"""
"""Every name from the document goes into the page as text (textContent), never as markup."""
DOCS_CSP = (
    "default-src 'self'; script-src 'sha256-"
    + base64.b64encode(hashlib.sha256(DOCS_SCRIPT.encode()).digest()).decode()
    + "'; style-src 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
).encode()
"""/docs runs its own script only: markup that slipped into the page could not run script either."""
DOCS_HTML = (
    """<!doctype html>
<html><head><meta charset="utf-8"><title>ferry API</title>
<style>body{font-family:sans-serif;margin:2em;max-width:60em}section{border:1px solid #ccc;padding:.5em 1em;
margin:.5em 0}textarea{width:100%;height:4em}pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap}</style>
</head><body><h1>ferry API</h1><p>The OpenAPI 3.1 document: <a href="/openapi.json">/openapi.json</a>.</p>
<div id="paths"></div>
<script>"""
    + DOCS_SCRIPT
    + """</script></body></html>
"""
).encode()
