"""Blocking steps off the event loop on daemon threads: a stopping process never waits for one (a load that
takes minutes, a call to an unreachable store), unlike ``asyncio.to_thread``'s executor, whose threads the
interpreter joins at exit."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DaemonThreads:
    """Threads for blocking steps that the process's exit never waits for (daemon), reused while idle."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._started = 0

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)
        with self._lock:
            if self._idle:
                self._idle -= 1  # one of the idle threads takes it
                return
            self._started += 1
            name = f"{self.name}-{self._started}"
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            self._jobs.get()()
            with self._lock:
                self._idle += 1


THREADS = DaemonThreads("ferry-reconciler")


def in_daemon_thread(loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """A future of ``loop`` settled with ``fn(*args)``, run in one of ``THREADS``."""
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def work() -> None:
        value: T | BaseException
        try:
            value, ok = fn(*args), True
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            value, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, value)

    THREADS.submit(work)
    return future


def retrieve(future: asyncio.Future[Any]) -> None:
    """Retrieve what an abandoned step raised, so asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()
