"""The admission and drain of an endpoint version: requests and threads counted in flight, waited for when retired.

``enter`` admits a request or refuses it (retiring: resolve again; over ``max_queue_size``: 503), ``leave`` ends
it, ``track`` counts a sync stage's pool thread until it ends (a timed-out request leaves it running), and
``wait`` takes no new requests and waits for all of them, before the version closes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ferry.errors import Overloaded

log = logging.getLogger("ferry.serving.drain")  # the name from before serving/ had subpackages: users' log filters


class Retired(Exception):
    """The runtime a request resolved is being retired: the data plane resolves the endpoint again."""


class Drain:
    """Counts of what runs in one endpoint version, and the wait for them to end (see the module's text)."""

    def __init__(self, key: str, max_queue_size: int, overloaded: Callable[[], None]) -> None:
        self.key = key
        self.max_queue_size = max_queue_size
        """Requests this version holds (running or waiting) before it answers 503 (aux ``max_queue_size``)."""
        self.overloaded = overloaded
        """Called for each request refused over ``max_queue_size`` (the endpoint's meter counts them)."""
        self.inflight = 0
        self.requests = 0
        self.retiring = False
        """Set when the version is retired: requests that resolved it resolve again."""
        self._idle = threading.Condition()
        self._threads = 0
        """Sync stages running in the pool, counted until they end (even after their request timed out)."""

    def enter(self) -> None:
        with self._idle:
            if self.retiring:
                raise Retired(self.key)
            if self.inflight >= self.max_queue_size:
                self.overloaded()
                raise Overloaded(
                    f"endpoint {self.key}: {self.inflight} requests are already waiting (aux config max_queue_size "
                    f"{self.max_queue_size}); retry shortly",
                    retry_after=1.0,
                )
            self.inflight += 1
            self.requests += 1

    def leave(self) -> None:
        with self._idle:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.notify_all()

    def track(self, work: Future[Any]) -> Future[Any]:
        """Count ``work`` until it ends: a request that timed out leaves its thread running, and the drain waits."""
        with self._idle:
            self._threads += 1
        work.add_done_callback(self._thread_done)
        return work

    def _thread_done(self, _: Future[Any]) -> None:
        with self._idle:
            self._threads -= 1
            if self._threads == 0:
                self._idle.notify_all()

    def wait(self, timeout: float) -> bool:
        """Take no new requests, wait up to ``timeout`` for those in flight; False when some still run."""
        with self._idle:
            self.retiring = True
            drained = self._idle.wait_for(lambda: self.inflight == 0 and self._threads == 0, timeout)
            stragglers = max(self.inflight, self._threads)
        if not drained:
            log.warning(
                "endpoint %s: %s request(s) still running after the %g s drain; unloading it, they get 503",
                self.key,
                stragglers,
                timeout,
            )
        return drained
