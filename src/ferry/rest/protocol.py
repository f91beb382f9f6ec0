"""uvicorn's httptools protocol on a transport that joins each write to the next: an answer in one write.

Why: uvicorn writes an answer's head and its body in two ``transport.write`` calls, two syscalls on an idle
socket. On the sklearn job one worker's event loop bounds the rate, and those two writes were 16 % of the
loop's samples (bench/README "one write per answer"). Every ferry answer has a content-length and one body
(rest/http.py ``send``), and uvicorn's ``send`` does not yield between them, so its head and body come in one
turn of the loop.

How: ``FerryHttpProtocol`` is uvicorn's own httptools protocol whose transport is a ``OneWriteTransport``. That
holds a write back until the next write, which goes out joined to it, or until the loop's current turn ends
(``call_soon``), whichever comes first; ``close`` and ``write_eof`` send what it holds first. The HTTP side stays
uvicorn's whole: parsing, keep-alive, pipelining, flow control, 100-continue, header checks, streamed bodies,
access log. A write that waits is only ever late by the rest of one turn (a 100-continue, a streamed part).

Why this way: it uses uvicorn's public ``http=`` option (a protocol class), the class that ``http="httptools"``
names (``uvicorn.protocols.http.httptools_impl:HttpToolsProtocol``), built as uvicorn builds every protocol, and
asyncio's ``Protocol.connection_made``; it relies only on that class writing through the transport it is given.
No private attribute, method or class of uvicorn is read or replaced. The version before subclassed uvicorn's
``RequestResponseCycle`` and swapped each cycle's class at run time, which tied ferry to uvicorn's internals of
one minor release. Against it, answers now also pass uvicorn's header checks, and an app that fails after
sending a head gets uvicorn's handling (the head goes out, the connection closes) where the head used to be
dropped for a 500. What it adds, a ``call_soon`` for each held write, did not show in the speed (bench/README,
2026-12-05).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["FerryHttpProtocol", "OneWriteTransport"]


class OneWriteTransport(asyncio.Transport):
    """A transport that joins consecutive writes: each goes out with the next, or when the loop's turn ends."""

    __slots__ = ("_transport", "_loop", "_held", "_flush_due")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush_due = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = data if type(data) is bytes else bytes(data)  # a caller may reuse its buffer
            if not self._flush_due:
                self._flush_due = True
                self._loop.call_soon(self._flush_later)
        else:
            self._held = None
            self._transport.write(b"".join((held, data)))  # an answer's head and body: one syscall

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def flush(self) -> None:
        """Write what is held now."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():  # a lost connection takes no more writes
            self._transport.write(held)

    def _flush_later(self) -> None:
        self._flush_due = False
        self.flush()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class FerryHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a ``OneWriteTransport``: ``http=`` for ``ferry serve`` (cli/serve.py)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        super().connection_made(OneWriteTransport(transport, asyncio.get_running_loop()))
