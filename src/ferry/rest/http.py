"""Plain ASGI helpers: read a body within a limit, decode it, and send JSON or bytes answers."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson

from ferry.errors import FerryError, InvalidInput, MethodNotAllowed, PayloadTooLarge, Timeout, strip_paths
from ferry.rest.encoding import inflate

log = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)
MAYBE_JSON_TYPES = ("", "application/x-www-form-urlencoded")
"""No type, or curl -d's default form type: such bodies are JSON when they parse as JSON, else bytes."""


def header(scope: dict, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


async def read_body(scope: dict, receive: Any, limit: int) -> bytes:
    """The whole request body, inflated per its Content-Encoding; PayloadTooLarge past ``limit`` bytes (declared,
    received or inflated)."""
    raw, encoding = await _read_raw(scope, receive, limit), header(scope, b"content-encoding")
    return await inflate(raw, encoding, limit) if encoding else raw  # no coroutine for the usual plain body


async def _read_raw(scope: dict, receive: Any, limit: int) -> bytes:
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


def decode_body(scope: dict, raw: bytes) -> Any:
    """JSON content becomes a dict/list (also for no type or curl's form type, when it parses); the rest, bytes."""
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


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is over the limit of {limit} bytes (FERRY_MAX_BODY_MB raises it)")


async def send(send_: Any, status: int, body: bytes, ctype: bytes = b"application/json", extra=()) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra]
    await send_({"type": "http.response.start", "status": status, "headers": headers})
    await send_({"type": "http.response.body", "body": body})


async def send_error(send_: Any, error: FerryError) -> None:
    """One table maps every ferry error to HTTP: its status code, its message, Retry-After for 503.

    When ferry itself failed (a 5xx that is not "retry later"), the client gets the kind and an id, and
    the log gets the message and traceback under that id. No answer carries a local directory.
    """
    kind = type(error).__name__
    payload = failure(error, kind) if failed(error) else {"error": error.message, "kind": kind, **_plain(error.details)}
    body = orjson.dumps({key: strip_paths(v) if isinstance(v, str) else v for key, v in payload.items()})
    await send(send_, error.status_code, body, extra=error_headers(error))


def error_headers(error: FerryError) -> list[tuple[bytes, bytes]]:
    """The headers an error's answer carries: Retry-After when it says when to retry, Allow for a method refused."""
    extra = []
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        extra.append((b"retry-after", str(max(1, round(retry_after))).encode()))
    if isinstance(error, MethodNotAllowed) and "allow" in error.details:
        extra.append((b"allow", str(error.details["allow"]).encode()))
    return extra


def failed(error: FerryError) -> bool:
    """Whether ferry itself failed: a 5xx that is neither "retry later" nor a timeout."""
    return error.status_code >= 500 and getattr(error, "retry_after", None) is None and not isinstance(error, Timeout)


def failure(error: FerryError, kind: str) -> dict:
    """What the client gets of a failure: the kind and an id; the log gets the message and traceback under it."""
    error_id = uuid.uuid4().hex[:12]
    log.error("error %s (%s): %s", error_id, kind, error.message, exc_info=(type(error), error, error.__traceback__))
    stage = {"stage": error.details["stage"]} if isinstance(error.details.get("stage"), str) else {}
    message = f"ferry failed to answer this request ({kind}); the server log has the details under id {error_id}"
    return {"error": message, "kind": kind, "id": error_id, **stage}


def _plain(details: dict) -> dict:
    return {k: v for k, v in details.items() if isinstance(v, (str, int, float, bool))}
