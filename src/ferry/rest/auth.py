"""Bearer-token locking of the HTTP routes: admit or refuse each request (the token sets: ``ferry/tokens.py``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from ferry.errors import FerryError, Forbidden, Unauthorized
from ferry.rest.http import header, send
from ferry.tokens import KnownTokens, login_token

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


class BearerAuth:
    """Admits a request whose ``Authorization: Bearer <token>`` is a known token; refuses the rest."""

    def __init__(
        self, tokens: Mapping[str, str] | Iterable[str], console_tokens: Mapping[str, str] | Iterable[str] = ()
    ) -> None:
        """``console_tokens`` (the admin tokens) are accepted under /console/ too, not on the API."""
        self._serve = KnownTokens(tokens)
        if not self._serve:
            raise ValueError("BearerAuth needs at least one token")
        self._console = self._serve + KnownTokens(console_tokens)

    async def admit(self, scope: dict, send_: Any) -> bool:
        """True to go on; False once a 401/403 answer has been sent."""
        if scope["path"] in OPEN_PATHS:
            return True
        authorization, console = header(scope, b"authorization"), scope["path"].startswith("/console/")
        if not authorization and console:
            authorization = f"Bearer {login_token(header(scope, b'cookie'))}"
        error = self.refusal(authorization, self._console if console else self._serve)
        if error is None:
            return True
        if console and scope["method"] in ("GET", "HEAD"):  # a browser: log in first
            login = (scope.get("root_path", "").rstrip("/") + "/console/login").encode()
            await send(send_, 303, b"", b"text/plain", [(b"location", login)])
            return False
        await _refuse(send_, error)
        return False

    def refusal(self, authorization: str, known: KnownTokens | None = None) -> FerryError | None:
        """None for a known token (of ``known``, default the serve tokens), else the error to answer with."""
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Unauthorized("this server needs a bearer token: send the header 'Authorization: Bearer <token>'")
        if not self.known(token, known):
            return Forbidden("the bearer token is not one this server accepts: check the token you were given")
        return None

    def known(self, token: str, known: KnownTokens | None = None) -> bool:
        return (self._serve if known is None else known).holder(token) is not None


async def _refuse(send_: Any, error: FerryError) -> None:
    body = orjson.dumps({"error": error.message, "kind": type(error).__name__})
    extra = [(b"www-authenticate", b"Bearer")] if isinstance(error, Unauthorized) else []
    await send(send_, error.status_code, body, extra=extra)
