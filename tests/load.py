"""A small HTTP/1.1 load loop for tests: N keep-alive connections, each sending one request after another.

Raw asyncio streams rather than an HTTP client library: the client must cost far less than the server it
measures on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    seconds: float

    def json(self):
        return orjson.loads(self.body)


@dataclass
class Tally:
    answers: list[Answer] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.answers) / self.elapsed if self.elapsed else 0.0

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for answer in self.answers:
            counts[answer.status] = counts.get(answer.status, 0) + 1
        return counts


async def request(reader, writer, host: str, method: str, path: str, body: bytes = b"", headers=()) -> Answer:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}", *headers]
    if body:
        head.append("Content-Type: application/json")
    started = time.perf_counter()
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    found: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        found[name.strip().lower()] = value.strip()
    payload = await reader.readexactly(int(found.get("content-length", "0")))
    return Answer(status, payload, found, time.perf_counter() - started)


async def hammer(
    port: int,
    path: str | Callable[[int], str],
    body: bytes | Callable[[int], bytes],
    connections: int = 16,
    seconds: float | None = None,
    count: int | None = None,
    until: asyncio.Event | None = None,
) -> Tally:
    """Send requests on ``connections`` connections until ``seconds`` pass, ``count`` are sent or ``until`` is set."""
    tally = Tally()
    sent = 0
    deadline = time.monotonic() + seconds if seconds else None

    def more() -> bool:
        if until is not None and until.is_set():
            return False
        if deadline is not None and time.monotonic() >= deadline:
            return False
        return count is None or sent < count

    async def connection() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while more():
                number = sent
                sent += 1
                target = path(number) if callable(path) else path
                payload = body(number) if callable(body) else body
                tally.answers.append(await request(reader, writer, f"127.0.0.1:{port}", "POST", target, payload))
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    tally.elapsed = time.monotonic() - started
    return tally


async def probe(port: int, path: str, stop: asyncio.Event, every: float = 0.05) -> list[Answer]:
    """GET ``path`` every ``every`` seconds on a connection of its own until ``stop`` is set."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        while not stop.is_set():
            answers.append(await request(reader, writer, f"127.0.0.1:{port}", "GET", path))
            await asyncio.sleep(every)
    finally:
        writer.close()
    return answers
