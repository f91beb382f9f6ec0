"""The OpenAPI document (one path per served endpoint) and the /docs page that renders it."""

from __future__ import annotations

from typing import Any

from ferry import __version__
from ferry.serving.routing import RouteTable

ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi(table: RouteTable) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/health/live": {"get": {"summary": "the process is up", "responses": {"200": {"description": "live"}}}},
        "/health/ready": {
            "get": {
                "summary": "the current revision is loaded",
                "responses": {"200": {"description": "ready"}, "503": {"description": "loading"}},
            }
        },
    }
    for key, runtime in sorted(table.runtimes.items()):
        paths[f"/serve/{key}"] = {"post": _operation(key, runtime.spec)}
    paths.setdefault("/serve/{endpoint}/{version}", {"post": _operation("any endpoint version", None)})
    return {
        "openapi": "3.1.0",
        "info": {"title": "ferry", "version": __version__, "description": f"revision {table.revision}"},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "kind": {"type": "string"}},
                }
            }
        },
    }


def _operation(key: str, spec: Any) -> dict[str, Any]:
    description = ""
    if spec is not None:
        inputs = ", ".join(f"{t.name or '?'} {t.dtype or ''}{list(t.shape) if t.shape else ''}" for t in spec.inputs)
        description = f"engine {spec.engine}" + (f"; model inputs: {inputs}" if inputs else "")
    return {
        "summary": f"infer with {key}",
        "description": description,
        "requestBody": {
            "content": {
                "application/json": {"schema": {}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }
        },
        "responses": {
            "200": {"description": "postprocess's answer", "content": {"application/json": {"schema": {}}}},
            "404": ERROR,
            "413": ERROR,
            "422": ERROR,
            "503": ERROR,
        },
    }


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
