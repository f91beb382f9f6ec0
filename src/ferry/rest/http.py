"""Plain ASGI helpers: read a body within a limit, decode it, and send JSON or bytes answers."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson

from ferry.errors import FerryError, InvalidInput, PayloadTooLarge

JSON_TYPES = ("application/json",)
MAYBE_JSON_TYPES = ("", "application/x-www-form-urlencoded", "text/plain")
"""curl -d sends form-urlencoded by default: such bodies are JSON when they parse as JSON."""


def header(scope: dict, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


async def read_body(scope: dict, receive: Any, limit: int) -> bytes:
    """The whole request body; PayloadTooLarge past ``limit`` bytes (declared or actual)."""
    declared = header(scope, b"content-length")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decode_body(scope: dict, raw: bytes, limit: int) -> Any:
    """JSON content becomes a dict/list; other content types stay bytes; gzip is inflated first."""
    if header(scope, b"content-encoding").lower() in ("gzip", "x-gzip"):
        raw = _gunzip(raw, limit)
    ctype = header(scope, b"content-type").split(";", 1)[0].strip().lower()
    if ctype in JSON_TYPES or ctype.endswith("+json"):
        return _json(raw) if raw else None
    if ctype in MAYBE_JSON_TYPES and raw:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    return raw if raw else None


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None


def _gunzip(raw: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidInput(f"Content-Encoding is gzip but the body is not valid gzip: {exc}") from None
    if len(out) > limit:
        raise _too_large(limit, "inflated ")
    return out


def _too_large(limit: int, what: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(f"the {what}request body is over the limit of {limit} bytes (FERRY_MAX_BODY_MB raises it)")


async def send(send_: Any, status: int, body: bytes, ctype: bytes = b"application/json", extra=()) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra]
    await send_({"type": "http.response.start", "status": status, "headers": headers})
    await send_({"type": "http.response.body", "body": body})


async def send_error(send_: Any, error: FerryError) -> None:
    """One table maps every ferry error to HTTP: its status code, its message, Retry-After for 503."""
    extra = []
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        extra.append((b"retry-after", str(max(1, round(retry_after))).encode()))
    payload = {"error": error.message, "kind": type(error).__name__, **_plain(error.details)}
    await send(send_, error.status_code, orjson.dumps(payload), extra=extra)


def _plain(details: dict) -> dict:
    return {k: v for k, v in details.items() if isinstance(v, (str, int, float, bool))}
