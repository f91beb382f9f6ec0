"""Request bodies under ``Content-Encoding``: gzip and deflate inflated in linear time, bounded in size and work.

A hostile body must not hold the event loop: the input is fed to zlib in slices of ``SLICE`` bytes (so the
rest of the body is never copied per gzip member), members are counted, the output is capped at the body
limit, and past ``ON_LOOP`` bytes of output the rest is inflated in a thread (zlib releases the GIL while it
inflates). Small bodies, nearly all of them, never leave the loop.
"""

from __future__ import annotations

import asyncio
import zlib

from ferry.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""Encodings ferry inflates and their zlib window settings (deflate: the zlib-wrapped stream of RFC 9110)."""
IDENTITY = ("", "identity")
SUPPORTED = "gzip, deflate or identity"
MAX_MEMBERS = 64
"""Most gzip members a body may hold: clients send one; thousands of empty ones are an attack."""
SLICE = 64 << 10
"""Compressed bytes handed to zlib at once (the most that is copied per member)."""
STEP = 256 << 10
"""Inflated bytes produced per call into zlib (under a millisecond of work)."""
ON_LOOP = 1 << 20
"""Inflated bytes produced on the event loop before the rest moves to a thread."""


def wbits_for(encoding: str) -> int | None:
    """zlib's window bits for a ``Content-Encoding`` value; None for identity; 415 for anything else."""
    name = encoding.strip().lower()
    if name in IDENTITY:
        return None
    if name in WBITS:
        return WBITS[name]
    raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported: send {SUPPORTED}")


async def inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    """``raw`` decoded per ``encoding`` (a ``Content-Encoding`` value); 400, 413 or 415 when it cannot be."""
    wbits = wbits_for(encoding)
    if wbits is None:
        return raw
    inflater = Inflater(raw, wbits, encoding.strip().lower(), limit)
    if inflater.run(ON_LOOP):
        return inflater.result()
    return await asyncio.to_thread(inflater.finish)


class Inflater:
    """One body's inflation, resumable: ``run`` produces up to a budget of output and says whether it is done."""

    def __init__(self, raw: bytes, wbits: int, name: str, limit: int) -> None:
        self.view = memoryview(raw)
        self.wbits, self.name, self.limit = wbits, name, limit
        self.position = 0
        self.members = 1
        self.zlib = zlib.decompressobj(wbits)
        self.pending = b""  # input zlib took but has not consumed (it stopped at max_length)
        self.out = bytearray()
        self.done = False

    def run(self, budget: int) -> bool:
        """Inflate until done or ``budget`` more bytes came out; True when the whole body is inflated."""
        stop = len(self.out) + budget
        while not self.done and len(self.out) < stop:
            self._step()
        return self.done

    def result(self) -> bytes:
        return bytes(self.out)

    def finish(self) -> bytes:
        """The rest inflated, then the whole body (the copy of a large one made here too, off the loop)."""
        self.run(self.limit + 1)
        return self.result()

    def _step(self) -> None:
        if self.zlib.eof:
            return self._next_member()
        data: bytes | memoryview = self.pending
        if not data:
            data = self.view[self.position : self.position + SLICE]
            self.position += len(data)
        try:
            chunk = self.zlib.decompress(data, min(STEP, self.limit + 1 - len(self.out)))
        except zlib.error as exc:
            raise self._invalid(str(exc)) from None
        if not (chunk or data or self.zlib.eof):  # no input left and zlib had nothing more to give
            raise self._invalid("the stream is truncated")
        self.pending = self.zlib.unconsumed_tail
        self.out += chunk
        if len(self.out) > self.limit:
            raise PayloadTooLarge(
                f"the inflated request body is over the limit of {self.limit} bytes (FERRY_MAX_BODY_MB raises it)"
            )

    def _next_member(self) -> None:
        unused = len(self.zlib.unused_data)  # at most one slice: what lies past this member's end
        self.position -= unused
        if self.position >= len(self.view):
            self.done = True
            return
        if self.wbits == WBITS["deflate"]:
            raise self._invalid("data follows the end of the deflate stream")
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise self._invalid(f"it holds more than {MAX_MEMBERS} gzip members (send the body as one member)")
        self.zlib = zlib.decompressobj(self.wbits)
        self.pending = b""

    def _invalid(self, why: str) -> InvalidInput:
        return InvalidInput(f"Content-Encoding is {self.name} but the body is not valid {self.name}: {why}")
