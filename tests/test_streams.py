"""Stream: chunks mapped, a limit on each wait, the end reported once however it comes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ferry.errors import InvalidInput, Timeout
from ferry.streams import Stream, status_of

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _chunks(*items: object, pause: float = 0.0) -> AsyncIterator[object]:
    for item in items:
        await asyncio.sleep(pause)
        if isinstance(item, Exception):
            raise item
        yield item


def _ended(stream: Stream) -> list[BaseException | None]:
    ends: list[BaseException | None] = []
    stream.at_end(ends.append)
    return ends


async def test_chunks_pass_through_each_map_and_the_end_is_reported_once() -> None:
    stream = Stream(_chunks(1, 2, 3)).map(lambda x: x * 10).map(str)
    ends = _ended(stream)
    assert [chunk async for chunk in stream] == ["10", "20", "30"]
    await stream.aclose()  # after the end: nothing more happens
    assert ends == [None] and status_of(ends[0]) == 200


async def test_a_wait_past_the_idle_limit_ends_the_stream_with_a_timeout() -> None:
    stream = Stream(_chunks(1, 2, pause=0.2), label="endpoint slow")
    stream.idle_timeout_s = 0.05
    ends = _ended(stream)
    with pytest.raises(Timeout, match="endpoint slow: no next chunk within 0.05 s"):
        await stream.__anext__()
    assert len(ends) == 1 and isinstance(ends[0], Timeout) and status_of(ends[0]) == 504


async def test_closing_early_closes_the_generator_and_counts_as_the_client_gone() -> None:
    closed: list[bool] = []

    async def endless() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.append(True)

    stream = Stream(endless())
    ends = _ended(stream)
    assert await stream.__anext__() == 1
    await stream.aclose()
    assert closed == [True] and len(ends) == 1 and status_of(ends[0]) == 499


async def test_an_error_inside_ends_the_stream_with_that_error() -> None:
    stream = Stream(_chunks(1, InvalidInput("bad")))
    ends = _ended(stream)
    assert await stream.__anext__() == 1
    with pytest.raises(InvalidInput):
        await stream.__anext__()
    assert status_of(ends[0]) == 400 and status_of(RuntimeError()) == 500
