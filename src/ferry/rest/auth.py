"""Bearer-token locking of the HTTP routes: load the token set, admit or refuse each request."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from ferry.errors import FerryError, InvalidInput
from ferry.rest.http import header, send

OPEN_PATHS = frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"})
"""Probes stay open: load balancers and orchestrators call them without credentials."""

FILE_FORMAT = "one token per line; blank lines and lines starting with # are ignored"


class Unauthorized(FerryError):
    """The request carries no bearer token."""

    status_code = 401


class Forbidden(FerryError):
    """The request's bearer token is not one this server knows."""

    status_code = 403


def load_tokens(inline: str = "", path: str = "") -> frozenset[str]:
    """Tokens from a comma-separated string and/or a token file; InvalidInput when a source given has none."""
    tokens: set[str] = set()
    if inline:  # empty means unset, as for every FERRY_ variable; blanks or commas alone are a mistake
        tokens |= _from_inline(inline)
    if path:
        tokens |= read_token_file(Path(path))
    return frozenset(tokens)


def read_token_file(path: Path) -> frozenset[str]:
    """The tokens in ``path``; an unreadable or empty file is an error, never an unlocked server."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the token file {path}: {exc} (give a readable file: {FILE_FORMAT})") from None
    tokens = frozenset(s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#"))
    if not tokens:
        raise InvalidInput(f"the token file {path} holds no token ({FILE_FORMAT})")
    return tokens


def _from_inline(inline: str) -> frozenset[str]:
    tokens = frozenset(s for part in inline.split(",") if (s := part.strip()))
    if not tokens:
        raise InvalidInput("FERRY_SERVE_TOKENS holds no token: give comma-separated tokens, or unset it")
    return tokens


class BearerAuth:
    """Admits a request whose ``Authorization: Bearer <token>`` is a known token; refuses the rest."""

    def __init__(self, tokens: Iterable[str]) -> None:
        # Comparing fixed-length digests keeps the comparison's time free of the tokens' lengths too.
        self._digests = [_digest(t.encode("utf-8")) for t in tokens]
        if not self._digests:
            raise ValueError("BearerAuth needs at least one token")

    async def admit(self, scope: dict, send_: Any) -> bool:
        """True to go on; False once a 401/403 answer has been sent."""
        if scope["path"] in OPEN_PATHS:
            return True
        error = self.refusal(header(scope, b"authorization"))
        if error is None:
            return True
        await _refuse(send_, error)
        return False

    def refusal(self, authorization: str) -> FerryError | None:
        """None for a known token, else the error to answer with."""
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Unauthorized("this server needs a bearer token: send the header 'Authorization: Bearer <token>'")
        if not self.known(token):
            return Forbidden("the bearer token is not one this server accepts: check the token you were given")
        return None

    def known(self, token: str) -> bool:
        given = _digest(token.encode("latin-1"))  # the header's own bytes: a UTF-8 token matches as sent
        found = False
        for digest in self._digests:  # every token, no early exit: the time says nothing about which matched
            found |= hmac.compare_digest(given, digest)
        return found


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


async def _refuse(send_: Any, error: FerryError) -> None:
    body = orjson.dumps({"error": error.message, "kind": type(error).__name__})
    extra = [(b"www-authenticate", b"Bearer")] if isinstance(error, Unauthorized) else []
    await send(send_, error.status_code, body, extra=extra)
