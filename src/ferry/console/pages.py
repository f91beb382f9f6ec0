"""ConsoleRoutes: the requests under /console: pages (GET), forms' writes (POST, then 303 to a page), the login.

Every value reaches a page through Jinja2 with autoescaping on, and the pages carry a Content-Security-Policy that
lets only the console's own script and stylesheet run: a model named ``<img src=x onerror=...>`` shows as text and
could run nothing even if a template forgot to escape. Reads of the store run off the event loop. Links are built
from the request's ``root_path``, so the console works behind a path prefix (``--root-path``). Who may write, and
what each form does: ``writes.py``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader, select_autoescape

from ferry.console.forms import read_form
from ferry.console.views import Views
from ferry.console.writes import Gate, Writes, same_origin
from ferry.control.store import AUTHOR
from ferry.errors import FerryError, Forbidden, InvalidInput, MethodNotAllowed, NotFound
from ferry.tokens import COOKIE

PREFIX = "/console"
CSP = (
    b"default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""Scripts and styles from the console's own files only: no inline script can run, whatever a name holds."""
HEADERS = ((b"content-security-policy", CSP), (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"))
Send = Callable[[int, bytes, bytes, tuple[tuple[bytes, bytes], ...]], Any]
"""How a page goes out: status, body, content type, extra headers (``rest.http.send`` bound to the connection)."""


class ConsoleRoutes:
    """The console's pages over ``views``, its forms' writes through ``writes`` when ``gate`` lets them through."""

    def __init__(
        self,
        views: Views,
        writes: Writes,
        gate: Gate,
        can_read: Callable[[str], bool] | None,
        refresh_s: float = 2.0,
        chat: bool = True,
    ) -> None:
        """``can_read``: whether a token may read (the serve tokens); None where reading needs no token. ``chat``:
        LLM endpoints get a chat box (a server with a data plane: ``ferry serve``, not ``ferry console``)."""
        self.chat = chat
        self.views = views
        self.writes = writes
        self.gate = gate
        self.can_read = can_read
        self.templates = Environment(
            loader=PackageLoader("ferry.console", "templates"), autoescape=select_autoescape(default=True)
        )
        self.templates.filters["utc"] = _utc
        static = resources.files("ferry.console").joinpath("static")
        self.css, self.js = static.joinpath("console.css").read_bytes(), static.joinpath("console.js").read_bytes()
        self.refresh_ms = int(refresh_s * 1000)

    @staticmethod
    def owns(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    async def handle(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        """Answer one request under /console: a page (GET), or a form's write (POST) then 303 to a page. Errors
        are pages too, with the error's status and message."""
        parts = [p for p in scope["path"][len(PREFIX) :].split("/") if p]
        console = scope.get("root_path", "").rstrip("/") + PREFIX
        try:
            if scope["method"] == "POST" and parts == ["login"]:
                return await self._login(scope, receive, send, console)
            write = self._form(parts) if scope["method"] == "POST" else None
            if write is not None:
                form = parse_qs((await read_form(scope, receive)).decode("utf-8", "replace"))
                author = self.gate.check(scope, _headers(scope), {k: v[0] for k, v in form.items()})
                AUTHOR.set(author)  # to_thread copies this context: the write's revision records it
                target = await asyncio.to_thread(write, form)
                return await send(303, b"", b"text/plain", (*HEADERS, (b"location", (console + target).encode())))
            if scope["method"] not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"/console/{'/'.join(parts)} is a page: GET it (only the console's forms POST)")
            if parts == ["static", "console.css"]:
                return await send(200, self.css, b"text/css; charset=utf-8", HEADERS)
            if parts == ["static", "console.js"]:
                return await send(200, self.js, b"text/javascript; charset=utf-8", HEADERS)
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            template, values = await asyncio.to_thread(self._page, parts, query)
            status = 200
        except FerryError as exc:
            template, values, status = "error.html", {"error": exc}, exc.status_code
        html = self.templates.get_template(template).render(
            console=console,
            chat=self.chat,
            form_token=self.gate.token(),
            refresh_ms=self.refresh_ms,
            **values,
        )
        await send(status, html.encode(), b"text/html; charset=utf-8", HEADERS)

    async def _login(self, scope: dict[str, Any], receive: Any, send: Send, console: str) -> None:
        """A token from the login form kept in an HttpOnly, SameSite=Strict cookie for the console's paths."""
        if not same_origin(_headers(scope)):
            raise Forbidden("log in from the console's own login page (this request's Origin is another site's)")
        form = parse_qs((await read_form(scope, receive)).decode("utf-8", "replace"))
        token = form.get("token", [""])[0].strip()
        readable = self.can_read is None or self.can_read(token)
        if not token or not (readable or self.gate.is_admin(token)):
            raise Forbidden("that token is not one this server accepts: check the token you were given")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{COOKIE}={token}; Path={console}; HttpOnly; SameSite=Strict{secure}"
        headers = (*HEADERS, (b"location", f"{console}/".encode()), (b"set-cookie", cookie.encode("latin-1")))
        await send(303, b"", b"text/plain", headers)

    def _page(self, parts: list[str], query: dict[str, list[str]]) -> tuple[str, dict[str, Any]]:
        """The template and its values for a path under /console (in a thread: the store may be remote)."""
        views = self.views
        match parts:
            case []:
                return "services.html", {"services": views.services()}
            case ["login"]:
                return "login.html", {"needed": self.can_read is not None, "admins": bool(self.gate.admins)}
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
            case ["services", sid, "rollback"]:  # the confirm step: what rolling back would change
                head = views.store.head(sid)
                return "rollback.html", views.diff(sid, head, _int(query.get("to", [""])[0], head))
            case ["services", sid, "instances"]:
                return "instances.html", views.instances(sid)
        raise NotFound(f"the console has no page /console/{'/'.join(parts)}: start at /console/")

    def _form(self, parts: list[str]) -> Callable[[Form], str] | None:
        """The write of the form that posts to this path (given the form, it returns the console path to show
        next); None when no form posts here, so a stray POST is refused before its body is read."""
        writes = self.writes
        match parts:
            case ["services", sid, "rollback"]:

                def rollback(form: Form) -> str:
                    writes.rollback(sid, _required_int(form, "to"))
                    return f"/services/{sid}/revisions"

                return rollback
            case ["services", sid, "canaries", name]:

                def weights(form: Form) -> str:
                    writes.canary_weights(sid, name, [_number(w) for w in form.get("weight", [])])
                    return f"/services/{sid}"

                return weights
            case ["models", mid, "publish"]:

                def publish(form: Form) -> str:
                    writes.publish(mid)
                    return f"/models#{mid}"

                return publish
            case ["models", mid, "tags"]:

                def tag(form: Form) -> str:
                    writes.tag(mid, [t for t in re.split(r"[,\s]+", form.get("tags", [""])[0]) if t])
                    return f"/models#{mid}"

                return tag
        return None


Form = dict[str, list[str]]
"""A posted form, as parse_qs reads it."""


def _headers(scope: dict[str, Any]) -> dict[bytes, str]:
    return {name.lower(): value.decode("latin-1") for name, value in scope.get("headers", ())}


def _required_int(form: dict[str, list[str]], key: str) -> int:
    value = form.get(key, [""])[0]
    if not value.isdigit():
        raise InvalidInput(f"the form needs {key} as a whole number, got {value!r}")
    return int(value)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(f"a weight must be a number, got {text!r}") from None


def _int(text: str, default: int = 1) -> int:
    return int(text) if text.isdigit() else max(1, default)


def _utc(timestamp: float | None) -> str:
    return "" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
