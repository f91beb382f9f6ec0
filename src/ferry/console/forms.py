"""A console form's body: read whole from the ASGI connection, bounded (no web imports)."""

from __future__ import annotations

from typing import Any

from ferry.errors import InvalidInput, PayloadTooLarge

FORM_LIMIT = 64 << 10
"""Bytes a console form may send: a few fields."""


async def read_form(scope: dict[str, Any], receive: Any, limit: int = FORM_LIMIT) -> bytes:
    """The url-encoded body of a POSTed form; PayloadTooLarge past ``limit``, InvalidInput for another kind."""
    kind = next((v for k, v in scope.get("headers", ()) if k.lower() == b"content-type"), b"").split(b";")[0].strip()
    if kind != b"application/x-www-form-urlencoded":
        raise InvalidInput("console writes take an HTML form (application/x-www-form-urlencoded)")
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client left before sending the whole form")
        body += message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"a console form sends at most {limit} bytes")
        more = message.get("more_body", False)
    return body
