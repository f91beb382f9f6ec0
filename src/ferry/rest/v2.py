"""The Open Inference Protocol (KServe V2) over HTTP: /v2 routes, JSON tensors and the binary tensor extension."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ferry import __version__
from ferry.errors import FerryError, InvalidInput, NotFound
from ferry.rest.http import header, read_body, send
from ferry.serving import v2
from ferry.serving.request.dataplane import DataPlane

PREFIX = "/v2"
MODELS = "/v2/models/"
HEADER_LENGTH = b"inference-header-content-length"
SERVER_PATHS = frozenset({PREFIX, "/v2/health/live", "/v2/health/ready"})
EXTENSIONS = ["binary_tensor_data"]
"""The V2 extensions ferry implements (what GET /v2 reports)."""
ROUTES = "GET /v2, /v2/health/live, /v2/health/ready, /v2/models/<name>[/versions/<v>][/ready]; POST .../infer"


def is_v2(path: str) -> bool:
    """Whether ``path`` is one of the /v2 routes' (the app hands those to V2Routes)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


@dataclass(frozen=True)
class V2Routes:
    """The /v2 routes over one DataPlane; ``readiness`` is the app's own (what /health/ready answers)."""

    plane: DataPlane
    readiness: Callable[[], tuple[str, str | None]]
    max_body: int

    async def handle(self, scope: dict, receive: Any, send_: Any) -> None:
        """Answer one /v2 request; FerryErrors go up to the app, which maps them to status codes."""
        path, method = scope["path"].rstrip("/"), scope["method"]
        if path.startswith(MODELS):
            name, version, action = _model_path(path[len(MODELS) :])
            if action == "infer":
                if method != "POST":
                    return await _not_allowed(send_, "POST")
                return await self._infer(scope, receive, send_, name, version)
        if method not in ("GET", "HEAD"):
            if not (path.startswith(MODELS) or path in SERVER_PATHS):
                raise NotFound(f"no route {path}: {ROUTES}")
            return await _not_allowed(send_, "GET")
        if path.startswith(MODELS):
            return await self._model_get(send_, name, version, action)
        await self._server_get(send_, path)

    async def _server_get(self, send_: Any, path: str) -> None:
        if path == PREFIX:
            return await _json(send_, 200, {"name": "ferry", "version": __version__, "extensions": EXTENSIONS})
        if path == "/v2/health/live":
            return await _json(send_, 200, {"live": True})
        if path == "/v2/health/ready":
            status, reason = self.readiness()
            if status == "ready":
                return await _json(send_, 200, {"ready": True})
            return await _json(
                send_, 400, {"ready": False, "error": f"ferry is {status}: {reason}", "kind": "NotReady"}
            )
        raise NotFound(f"no route {path}: {ROUTES}")

    async def _model_get(self, send_: Any, name: str, version: str | None, action: str) -> None:
        runtime = self.plane.model(name, version) if action != "ready" else self._ready_model(name, version)
        if action == "ready":
            if runtime is None:
                error = {"error": _not_ready(name, version), "kind": "NotReady"}
                return await _json(send_, 400, {"name": name, "ready": False, **error})
            return await _json(send_, 200, {"name": name, "ready": True})
        versions = [runtime.spec.version] if version else [v for v in self.plane.versions(name) if v]
        await _json(send_, 200, v2.metadata(runtime, versions))

    def _ready_model(self, name: str, version: str | None) -> Any:
        """The model's runtime, or None while it loads or after it failed (unknown names stay 404)."""
        try:
            return self.plane.model(name, version)
        except FerryError as exc:
            if exc.status_code == 503:
                return None
            raise

    async def _infer(self, scope: dict, receive: Any, send_: Any, name: str, version: str | None) -> None:
        try:
            request = parse_request(scope, await read_body(scope, receive, self.max_body))
        except FerryError as exc:
            self.plane.unrouted(name, exc.status_code)
            raise
        runtime, outputs = await self.plane.infer_tensors(name, version, request.inputs, request.outputs or None)
        head: dict[str, Any] = {"model_name": runtime.spec.name, "model_version": runtime.spec.version}
        if request.id is not None:
            head["id"] = request.id
        await send_response(send_, head, outputs, request.binary)


def _model_path(rest: str) -> tuple[str, str | None, str]:
    """``name[/versions/v][/ready|/infer]`` -> (name, version, action: "" for metadata)."""
    parts = rest.split("/")
    action = parts.pop() if len(parts) in (2, 4) and parts[-1] in ("ready", "infer") else ""
    if len(parts) == 1 and parts[0]:
        return parts[0], None, action
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2], action
    raise NotFound(f"no route {MODELS}{rest}: {ROUTES}")


def _not_ready(name: str, version: str | None) -> str:
    return f"model {name}{'/' + version if version else ''} is not ready (loading or failed: `ferry status` says)"


async def _json(send_: Any, status: int, body: Any) -> None:
    await send(send_, status, orjson.dumps(body))


async def _not_allowed(send_: Any, allowed: str) -> None:
    body = orjson.dumps({"error": f"method not allowed: use {allowed}", "kind": "MethodNotAllowed"})
    await send(send_, 405, body, extra=[(b"allow", allowed.encode())])


# requests ---------------------------------------------------------------------------------------


@dataclass
class InferRequest:
    """A decoded V2 inference request: named arrays, the outputs asked for, and which to send as binary."""

    id: Any
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    binary: dict[str, bool]
    """Output name -> whether to answer it as binary data; "*" is the request-wide default."""


def parse_request(scope: dict, body: bytes) -> InferRequest:
    """JSON (and binary tensor data after it, per Inference-Header-Content-Length) -> InferRequest; 400 if malformed."""
    json_part, binary = _split_body(header(scope, HEADER_LENGTH), body)
    try:
        request = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise InvalidInput('the inference request needs "inputs": a list of {"name", "shape", "datatype", "data"}')
    if not isinstance(request.get("outputs", []), list):
        raise InvalidInput('"outputs" must be a list of {"name": ...}')
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in request["inputs"]:
        name, array, offset = _input(item, binary, offset)
        if name in inputs:
            raise InvalidInput(f"input {name!r} is given twice")
        inputs[name] = array
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data after the JSON belong to no input")
    outputs, wants = _requested(request)
    return InferRequest(request.get("id"), inputs, outputs, wants)


def _split_body(length: str, body: bytes) -> tuple[bytes, bytes]:
    if not length:
        return body, b""
    if not length.isdigit() or int(length) > len(body):
        raise InvalidInput(f"Inference-Header-Content-Length {length!r} is not a size within the {len(body)}-byte body")
    return body[: int(length)], body[int(length) :]


def _input(item: Any, binary: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    """One request input as an array of its shape and datatype; the new offset into the binary data."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInput('each input needs "name", "shape", "datatype" and "data" (or binary_data_size)')
    name, dtype_name, shape = item["name"], item.get("datatype"), item.get("shape")
    if dtype_name not in v2.DATATYPES:
        raise InvalidInput(f"input {name}: datatype {dtype_name!r} is not one of {', '.join(v2.DATATYPES)}")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise InvalidInput(f"input {name}: shape must be a list of sizes (non-negative integers), got {shape!r}")
    size = _parameters(item, f"input {name}").get("binary_data_size")
    if size is not None:
        if not _count(size) or offset + size > len(binary):
            raise InvalidInput(f"input {name}: binary_data_size {size!r} runs past the {len(binary)} binary bytes")
        return name, _from_binary(name, dtype_name, shape, binary[offset : offset + size]), offset + size
    if "data" not in item:
        raise InvalidInput(f'input {name}: give "data" (or binary data with parameters.binary_data_size)')
    return name, _from_json(name, dtype_name, shape, item["data"]), offset


def _count(value: Any) -> bool:
    """A non-negative integer (JSON's true and false are no sizes)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parameters(item: dict, what: str) -> dict:
    parameters = item.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f'{what}: "parameters" must be an object')
    return parameters


def _from_json(name: str, dtype_name: str, shape: list[int], data: Any) -> np.ndarray:
    flat = _flatten(data)
    if len(flat) != math.prod(shape):
        raise InvalidInput(f"input {name}: shape {shape} holds {math.prod(shape)} values, data has {len(flat)}")
    if dtype_name == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InvalidInput(f"input {name}: BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [v.encode() for v in flat]
        return array.reshape(shape)
    if not all(isinstance(v, (int, float)) for v in flat):  # bool is an int
        raise InvalidInput(f"input {name}: {dtype_name} data must be numbers" + " or booleans" * (dtype_name == "BOOL"))
    try:
        return np.array(flat, dtype=v2.DATATYPES[dtype_name]).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"input {name}: data does not fit {dtype_name}: {exc}") from None


def _flatten(data: Any) -> list[Any]:
    """Row-major values of ``data``, given flat or nested."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    for value in data:
        flat.extend(_flatten(value))
    return flat


def _from_binary(name: str, dtype_name: str, shape: list[int], raw: bytes) -> np.ndarray:
    count = math.prod(shape)
    if dtype_name == "BYTES":
        values = _length_prefixed(name, raw)
        if len(values) != count:
            raise InvalidInput(f"input {name}: shape {shape} holds {count} values, the binary data has {len(values)}")
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    dtype = v2.DATATYPES[dtype_name].newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name}: shape {shape} of {dtype_name} takes {count * dtype.itemsize} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _length_prefixed(name: str, raw: bytes) -> list[bytes]:
    values, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidInput(f"input {name}: BYTES binary data is cut inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, at)
        if at + 4 + length > len(raw):
            raise InvalidInput(f"input {name}: a BYTES element of {length} bytes runs past the binary data")
        values.append(raw[at + 4 : at + 4 + length])
        at += 4 + length
    return values


def _requested(request: dict) -> tuple[list[str], dict[str, bool]]:
    wants = {"*": bool(_parameters(request, "the inference request").get("binary_data_output", False))}
    names = []
    for item in request.get("outputs", []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput('each requested output needs "name"')
        names.append(item["name"])
        binary = _parameters(item, f"output {item['name']}").get("binary_data")
        if binary is not None:
            wants[item["name"]] = bool(binary)
    return names, wants


# responses --------------------------------------------------------------------------------------


async def send_response(send_: Any, head: dict[str, Any], outputs: dict[str, np.ndarray], binary: dict) -> None:
    """The V2 response: JSON, or JSON then each binary output's bytes with Inference-Header-Content-Length."""
    described, chunks = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": v2.datatype(array), "shape": list(array.shape)}
        if binary.get(name, binary["*"]):
            raw = _to_binary(array, entry["datatype"])
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json(array, entry["datatype"])
        described.append(entry)
    body = orjson.dumps({**head, "outputs": described})
    if not chunks:
        return await send(send_, 200, body)
    extra = [(b"inference-header-content-length", str(len(body)).encode())]
    await send(send_, 200, body + b"".join(chunks), b"application/octet-stream", extra)


def _to_json(array: np.ndarray, dtype_name: str) -> list[Any]:
    flat = array.ravel()
    if dtype_name == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return flat.tolist()


def _to_binary(array: np.ndarray, dtype_name: str) -> bytes:
    if dtype_name == "BYTES":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
