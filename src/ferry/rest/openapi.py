"""The OpenAPI document (one path per served endpoint) and the /docs page that renders it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ferry import __version__
from ferry.serving.routing import RouteTable

ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
ERROR_STATUSES = {
    "400": "the body is not valid JSON, or not valid gzip under Content-Encoding: gzip",
    "401": "a bearer token is required (the server runs with --token-file)",
    "403": "the bearer token is not accepted",
    "404": "no such endpoint or version on this service",
    "405": "the method is not allowed on this path (see the Allow header)",
    "413": "the body, or the body once inflated, is over the server's limit (FERRY_MAX_BODY_MB)",
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
    return {
        "openapi": "3.1.0",
        "info": {"title": "ferry", "version": __version__, "description": f"revision {table.revision}"},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA}},
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


DOCS_HTML = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>ferry API</title>
<style>body{font-family:sans-serif;margin:2em;max-width:60em}section{border:1px solid #ccc;padding:.5em 1em;
margin:.5em 0}textarea{width:100%;height:4em}pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap}</style>
</head><body><h1>ferry API</h1><p>The OpenAPI 3.1 document: <a href="/openapi.json">/openapi.json</a>.</p>
<div id="paths"></div>
<script>
fetch("/openapi.json").then(r => r.json()).then(doc => {
  document.querySelector("h1").textContent = `ferry ${doc.info.version} (${doc.info.description})`;
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const s = document.createElement("section");
      s.innerHTML = `<h3>${method.toUpperCase()} ${path}</h3><p>${op.summary}. ${op.description || ""}</p>`;
      if (method === "post" && !path.includes("{")) {
        const body = Object.assign(document.createElement("textarea"), {value: "{}"});
        const out = document.createElement("pre");
        const go = Object.assign(document.createElement("button"), {textContent: "send"});
        go.onclick = () => fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
          body: body.value}).then(async r => out.textContent = `${r.status}\n${await r.text()}`);
        s.append(body, go, out);
      }
      document.getElementById("paths").append(s);
    }
  }
});
</script></body></html>
"""
