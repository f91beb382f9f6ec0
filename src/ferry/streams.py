"""Stream: a model result that comes in chunks (an LLM's answer, token by token), and what wraps it on its way out.

An engine's ``run`` may return a ``Stream`` instead of a value. The stage runner then maps the user's
``postprocess_chunk`` over it, the runtime counts the request when the stream ends (not when ``run`` returns, so a
version being retired waits for its streams), and the face sends each chunk as it comes. Closing a stream early
(the client went away) closes the engine's generator, which frees what it held.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from ferry.errors import FerryError, Timeout


class Stream:
    """Chunks of one answer, with a limit on the wait for each and callbacks run once when it ends."""

    __slots__ = ("_chunks", "_maps", "_ends", "idle_timeout_s", "_ended", "label")

    def __init__(self, chunks: AsyncIterator[Any], label: str = "") -> None:
        self._chunks = chunks
        self._maps: list[Callable[[Any], Any]] = []
        self._ends: list[Callable[[BaseException | None], None]] = []
        self.idle_timeout_s: float | None = None
        """The longest wait for the first chunk and between chunks (the endpoint's request timeout)."""
        self._ended = False
        self.label = label
        """What the stream answers (an endpoint's key), for messages."""

    def map(self, fn: Callable[[Any], Any]) -> Stream:
        """Apply ``fn`` to every chunk from now on (a per-chunk postprocess)."""
        self._maps.append(fn)
        return self

    def at_end(self, fn: Callable[[BaseException | None], None]) -> None:
        """Call ``fn(error or None)`` once when the stream ends, fails or is closed (None: it ended whole)."""
        self._ends.append(fn)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        try:
            if self.idle_timeout_s is None:
                chunk = await self._chunks.__anext__()
            else:
                chunk = await asyncio.wait_for(self._chunks.__anext__(), self.idle_timeout_s)
            for fn in self._maps:
                chunk = fn(chunk)
        except StopAsyncIteration:
            self._end(None)
            raise
        except TimeoutError:
            error = Timeout(f"{self.label}: no next chunk within {self.idle_timeout_s:g} s (aux request_timeout_ms)")
            await self._close(error)
            raise error from None
        except BaseException as exc:
            await self._close(exc)
            raise
        return chunk

    async def aclose(self) -> None:
        """Stop early (the client went away): the engine's generator is closed, the end callbacks run. A stream
        that ended already is left as it is."""
        if self._ended:
            return
        await self._close(asyncio.CancelledError("the client went away"))

    async def _close(self, error: BaseException) -> None:
        closing = getattr(self._chunks, "aclose", None)
        try:
            if closing is not None:
                await closing()
        finally:
            self._end(error)

    def _end(self, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        for fn in self._ends:
            fn(error)


def status_of(error: BaseException | None) -> int:
    """The status a stream's end counts as: 200 whole, the error's own, 499 when the client went away."""
    if error is None:
        return 200
    if isinstance(error, FerryError):
        return error.status_code
    if isinstance(error, asyncio.CancelledError):
        return 499
    return 500
