"""ConsoleRoutes: GET /console/... answered with a rendered page (or the stylesheet), reads off the event loop.

Every value reaches the page through Jinja2 with autoescaping on, and the pages carry a Content-Security-Policy
that allows no script at all and styles only from the console itself: a model named ``<img src=x onerror=...>``
shows as text and could run nothing even if a template forgot to escape. Links are built from the request's
``root_path``, so the console works behind a path prefix (``ferry serve --root-path``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader, select_autoescape

from ferry.console.views import Views
from ferry.errors import NotFound

PREFIX = "/console"
CSP = (
    b"default-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
    b"frame-ancestors 'none'"
)
HEADERS = ((b"content-security-policy", CSP), (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"))
Send = Callable[[int, bytes, bytes, tuple[tuple[bytes, bytes], ...]], Any]
"""How a page goes out: status, body, content type, extra headers (``rest.http.send`` bound to the connection)."""


class ConsoleRoutes:
    """The console's pages over ``views``; ``handle`` answers one GET under ``/console``."""

    def __init__(self, views: Views) -> None:
        self.views = views
        self.templates = Environment(
            loader=PackageLoader("ferry.console", "templates"), autoescape=select_autoescape(default=True)
        )
        self.templates.filters["utc"] = _utc
        self.css = resources.files("ferry.console").joinpath("static/console.css").read_bytes()

    @staticmethod
    def owns(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    async def handle(self, scope: dict[str, Any], send: Send) -> None:
        """Render the page at ``scope["path"]``; NotFound (404) for a path or an id the console does not know."""
        parts = [p for p in scope["path"][len(PREFIX) :].split("/") if p]
        root = scope.get("root_path", "").rstrip("/")
        if parts == ["static", "console.css"]:
            return await send(200, self.css, b"text/css; charset=utf-8", HEADERS)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        template, values = await asyncio.to_thread(self._page, parts, query)
        html = self.templates.get_template(template).render(root=root, console=root + PREFIX, **values)
        await send(200, html.encode(), b"text/html; charset=utf-8", HEADERS)

    def _page(self, parts: list[str], query: dict[str, list[str]]) -> tuple[str, dict[str, Any]]:
        """The template and its values for a path under /console (in a thread: the store may be remote)."""
        views = self.views
        match parts:
            case []:
                return "services.html", {"services": views.services()}
            case ["models"]:
                return "models.html", {"models": views.models()}
            case ["services", sid]:
                return "service.html", views.service(sid)
            case ["services", sid, "revisions"]:
                return "revisions.html", views.revisions(sid, _int(query.get("page", ["1"])[0]))
            case ["services", sid, "diff"]:
                head = views.store.head(sid)
                old, new = (_int(query.get(k, [""])[0], default) for k, default in (("from", head - 1), ("to", head)))
                return "diff.html", views.diff(sid, old, new)
            case ["services", sid, "instances"]:
                return "instances.html", views.instances(sid)
        raise NotFound(f"the console has no page /console/{'/'.join(parts)}: start at /console/")


def _int(text: str, default: int = 1) -> int:
    return int(text) if text.isdigit() else max(1, default)


def _utc(timestamp: float | None) -> str:
    return "" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
