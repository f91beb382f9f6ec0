"""The console's writes: who may make them, and the service operations they run (the same as the CLI's).

A write is a POST of a form from a console page. It is accepted when

1. it comes from the console itself: its ``Origin`` (else ``Referer``) names this server's own scheme, host and
   port, and it carries the form token the page was rendered with (an HMAC of the server's secret: every worker of
   one ``ferry serve`` shares it), so another site cannot make a visitor's browser post one;
2. and its sender may write: with admin tokens set (``--admin-token-file``, ``FERRY_ADMIN_TOKENS``), the request
   carries one (``Authorization: Bearer``); with none set, it comes from this machine (loopback) only.

Each write is one operation users have on the command line: rollback (``ServiceControl.rollback``), canary
weights (``ServiceControl.add_canary`` with the same targets), publish and tag (the registry, then the
auto-update rules that follow the model), so it makes the same revisions the commands make.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ferry.control.autoupdate import reconcile_for_model
from ferry.control.service import ServiceControl
from ferry.control.store import Revision, os_user
from ferry.errors import Forbidden, InvalidInput
from ferry.registry.models import ModelRecord
from ferry.tokens import KnownTokens, login_token

SECRET_ENV = "FERRY_CONSOLE_SECRET"
"""The key of the forms' token: set once by ``ferry serve`` for all its workers (random when unset)."""


def form_secret() -> bytes:
    """This server's form key: FERRY_CONSOLE_SECRET, else a random one set there for the workers to inherit."""
    value = os.environ.get(SECRET_ENV)
    if not value:
        value = os.environ[SECRET_ENV] = secrets.token_hex(32)
    return value.encode()


@dataclass(frozen=True)
class Gate:
    """Who may write: the admin tokens (none: loopback only), and the forms' key."""

    secret: bytes
    admins: KnownTokens = field(default_factory=KnownTokens)

    @classmethod
    def of(cls, admin_tokens: Mapping[str, str] | Iterable[str], secret: bytes) -> Gate:
        """``admin_tokens``: token -> holder's name (``ferry.tokens.load_tokens``), or tokens alone."""
        return cls(secret, KnownTokens(admin_tokens))

    def token(self) -> str:
        """The token every console form carries."""
        return hmac.new(self.secret, b"ferry console form", hashlib.sha256).hexdigest()

    def check(self, scope: dict[str, Any], headers: dict[bytes, str], form: dict[str, str]) -> str:
        """Who writes (the revision's author: "<the admin token's name> (console)", for an unnamed token
        "token <digest prefix> (console)", with no admin tokens "<OS user> on this machine (console)"); Forbidden
        (403), naming what is missing, unless the write may go on."""
        if not same_origin(headers):
            raise Forbidden(
                "console writes come from the console's own pages (this request's Origin is another site's)"
            )
        if not hmac.compare_digest(form.get("form_token", ""), self.token()):
            raise Forbidden("the form's token is missing or stale: reload the page and try again")
        if self.admins:
            scheme, _, given = headers.get(b"authorization", "").partition(" ")
            token = given.strip() if scheme.lower() == "bearer" else login_token(headers.get(b"cookie", ""))
            holder = self.admins.holder(token) if token else None
            if holder is None:
                raise Forbidden(
                    "console writes need an admin token: log in with one at /console/login, or send "
                    "'Authorization: Bearer <admin token>'"
                )
            return f"{holder} (console)"
        if not _loopback(scope):
            raise Forbidden(
                "console writes are open to this machine only while no admin token is set: start ferry serve with "
                "--admin-token-file FILE (or FERRY_ADMIN_TOKENS) and send one"
            )
        return f"{os_user()} on this machine (console)"

    def is_admin(self, token: str) -> bool:
        return bool(token) and self.admins.holder(token) is not None


class Writes:
    """The operations behind the console's buttons."""

    def __init__(self, control: ServiceControl) -> None:
        self.control = control

    def rollback(self, service_id: str, to: int) -> Revision:
        return self.control.rollback(service_id, to).revision

    def canary_weights(self, service_id: str, endpoint: str, weights: list[float]) -> Revision:
        """The canary ``endpoint`` with new weights over the same targets."""
        canary = self.control.store.get_revision(service_id).config.canaries.get(endpoint)
        if canary is None:
            raise InvalidInput(f"service {service_id} has no canary {endpoint!r}: the page was stale, reload it")
        if len(weights) != len(canary.weights):
            raise InvalidInput(f"canary {endpoint} has {len(canary.weights)} targets: give a weight for each")
        outcome = self.control.add_canary(
            service_id,
            endpoint=endpoint,
            weights=tuple(weights),
            input_endpoints=canary.input_endpoints,
            input_endpoint_prefix=canary.input_endpoint_prefix,
        )
        return outcome.revision

    def publish(self, model_id: str) -> ModelRecord:
        return self._followed(self.control.registry.publish(model_id))

    def tag(self, model_id: str, tags: list[str]) -> ModelRecord:
        if not tags:
            raise InvalidInput("give at least one tag (several: separate them with spaces or commas)")
        return self._followed(self.control.registry.tag(model_id, tags))

    def _followed(self, model: ModelRecord) -> ModelRecord:
        reconcile_for_model(self.control.store, self.control.registry, model)  # as `ferry model publish` does
        return model


def same_origin(headers: dict[bytes, str]) -> bool:
    """The request's Origin (else Referer) is this server as the browser reached it (its Host header)."""
    seen = headers.get(b"origin") or headers.get(b"referer") or ""
    host = headers.get(b"host", "")
    parts = urlsplit(seen)
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc == host


def _loopback(scope: dict[str, Any]) -> bool:
    client = scope.get("client") or ("", 0)
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False
