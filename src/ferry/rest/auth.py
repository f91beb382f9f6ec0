"""Bearer-token locking of the HTTP routes: load the token set, admit or refuse each request."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any

import orjson

from ferry.errors import FerryError, Forbidden, InvalidInput, Unauthorized
from ferry.rest.http import header, send

OPEN_PATHS = frozenset(
    {
        "/health/live",
        "/health/ready",
        "/v2/health/live",
        "/v2/health/ready",
        "/console/login",
        "/console/static/console.css",
        "/console/static/console.js",
    }
)
"""Probes stay open: load balancers and orchestrators call them without credentials; so do the console's login
page and its stylesheet (a browser has no token until it logs in)."""
COOKIE = "ferry_token"
"""The console's login cookie: a browser cannot send a bearer header, so under /console the token comes from here."""

FILE_FORMAT = "one token per line; blank lines and lines starting with # are ignored"


def load_tokens(inline: str = "", path: str = "", variable: str = "FERRY_SERVE_TOKENS") -> frozenset[str]:
    """Tokens from a comma-separated string and/or a token file; InvalidInput when a source given has none."""
    tokens: set[str] = set()
    if inline:  # empty means unset, as for every FERRY_ variable; blanks or commas alone are a mistake
        tokens |= _from_inline(inline, variable)
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


def _from_inline(inline: str, variable: str) -> frozenset[str]:
    tokens = frozenset(s for part in inline.split(",") if (s := part.strip()))
    if not tokens:
        raise InvalidInput(f"{variable} holds no token: give comma-separated tokens, or unset it")
    return tokens


class BearerAuth:
    """Admits a request whose ``Authorization: Bearer <token>`` is a known token; refuses the rest."""

    def __init__(self, tokens: Iterable[str], console_tokens: Iterable[str] = ()) -> None:
        """``console_tokens`` (the admin tokens) are accepted under /console/ too, not on the API."""
        # Comparing fixed-length digests keeps the comparison's time free of the tokens' lengths too.
        self._digests = [_digest(t.encode("utf-8")) for t in tokens]
        if not self._digests:
            raise ValueError("BearerAuth needs at least one token")
        self._console = [*self._digests, *(_digest(t.encode("utf-8")) for t in console_tokens)]

    async def admit(self, scope: dict, send_: Any) -> bool:
        """True to go on; False once a 401/403 answer has been sent."""
        if scope["path"] in OPEN_PATHS:
            return True
        authorization, console = header(scope, b"authorization"), scope["path"].startswith("/console/")
        if not authorization and console:
            authorization = f"Bearer {cookie_token(scope)}"
        error = self.refusal(authorization, self._console if console else self._digests)
        if error is None:
            return True
        if scope["path"].startswith("/console/") and scope["method"] in ("GET", "HEAD"):  # a browser: log in first
            login = (scope.get("root_path", "").rstrip("/") + "/console/login").encode()
            await send(send_, 303, b"", b"text/plain", [(b"location", login)])
            return False
        await _refuse(send_, error)
        return False

    def refusal(self, authorization: str, digests: list[bytes] | None = None) -> FerryError | None:
        """None for a known token (of ``digests``, default the serve tokens), else the error to answer with."""
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Unauthorized("this server needs a bearer token: send the header 'Authorization: Bearer <token>'")
        if not self.known(token, digests):
            return Forbidden("the bearer token is not one this server accepts: check the token you were given")
        return None

    def known(self, token: str, digests: list[bytes] | None = None) -> bool:
        given = _digest(token.encode("latin-1"))  # the header's own bytes: a UTF-8 token matches as sent
        found = False
        for digest in (
            self._digests if digests is None else digests
        ):  # every token, no early exit: the time says nothing about which matched
            found |= hmac.compare_digest(given, digest)
        return found


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


async def _refuse(send_: Any, error: FerryError) -> None:
    body = orjson.dumps({"error": error.message, "kind": type(error).__name__})
    extra = [(b"www-authenticate", b"Bearer")] if isinstance(error, Unauthorized) else []
    await send(send_, error.status_code, body, extra=extra)


def cookie_token(scope: dict) -> str:
    """The console login cookie's token, or ''."""
    jar = SimpleCookie()
    try:
        jar.load(header(scope, b"cookie"))
    except CookieError:
        return ""
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else ""
