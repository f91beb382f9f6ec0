"""uvicorn's httptools protocol with one change on the request path: an answer goes out in one write.

uvicorn writes an answer's head and body in two ``transport.write`` calls (two syscalls on an idle
socket) and checks every header against two regular expressions. Every answer ferry sends has a
``content-length`` and one body message (rest/http.py ``send``), and only ferry makes its headers,
so ``OneWriteCycle`` holds the head back until the body comes and writes both at once. Anything
else (a streamed body, no content-length, an access log, a HEAD request) takes uvicorn's own path.

Measured on the sklearn job (bench/README "one write per answer"): one worker's event loop bounds it on
a cheap model, and the two writes were 16 % of the loop's samples.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

__all__ = ["FerryHttpProtocol", "OneWriteCycle"]

CONTENT_LENGTH = b"content-length"


class OneWriteCycle(RequestResponseCycle):
    """A request-response cycle that sends a content-length answer's head and body in one write."""

    _head: dict | None = None
    """The held ``http.response.start`` message, until its body comes."""

    async def send(self, message: Any) -> None:
        if self._head is None:
            if message["type"] == "http.response.start" and self._can_hold():
                self._head = message  # written with the body: one syscall, not two
                return
            return await super().send(message)
        head, self._head = self._head, None
        if message["type"] == "http.response.start":  # a second head (uvicorn's 500 after an app error)
            return await self.send(message)  # replaces the first, which was never written
        if (
            message["type"] != "http.response.body"
            or message.get("more_body", False)
            or not self._one_write(head, message)
        ):
            await super().send(head)
            await super().send(message)

    def _can_hold(self) -> bool:
        return not (self.response_started or self.disconnected or self.access_log or self.scope["method"] == "HEAD")

    def _one_write(self, head: dict, message: dict) -> bool:
        """Write head and body at once and complete the answer; False (nothing written) when it does not fit."""
        body = message.get("body", b"")
        headers = head.get("headers", ())
        parts = [STATUS_LINE[head["status"]]]
        length = None
        for name, value in (*self.default_headers, *headers):
            if name == CONTENT_LENGTH:
                length = value
            elif name.lower() in (b"connection", b"transfer-encoding", CONTENT_LENGTH):
                return False  # uvicorn's path reads these
            parts += (name, b": ", value, b"\r\n")
        if length is None or length != str(len(body)).encode():
            return False
        if self.flow.write_paused or self.disconnected:
            return False
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        self.response_started = True
        self.waiting_for_100_continue = False
        self.transport.write(b"".join(parts))
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
        return True


class FerryHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose request cycles are ``OneWriteCycle``: ``--http`` for ``ferry serve``."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = OneWriteCycle  # the same state; its one added field has a class default
