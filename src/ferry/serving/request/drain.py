"""The admission and drain of an endpoint version: requests and threads counted in flight, waited for when retired.

A mixin of ``EndpointRuntime`` (whose ``__init__`` sets the attributes used here): ``_enter`` admits a request
or refuses it (retiring: resolve again; over ``max_queue_size``: 503), ``_leave`` ends it, ``_in_thread``
counts a sync stage's thread until it ends (a timed-out request leaves it running), and ``retire`` waits for
all of them before the version closes.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from ferry.errors import Overloaded

log = logging.getLogger("ferry.serving.drain")  # the name from before serving/ had subpackages: users' log filters
T = TypeVar("T")


class Retired(Exception):
    """The runtime a request resolved is being retired: the data plane resolves the endpoint again."""


class Drain:
    """Counts of what runs in one endpoint version, and the wait for them to end (see the module's text)."""

    meter: Any
    max_queue_size: int
    inflight: int
    requests: int
    retiring: bool
    _idle: threading.Condition
    _threads: int

    if TYPE_CHECKING:  # the runtime's (a property there): declared for the checker only, never shadowing it

        @property
        def key(self) -> str: ...

    def close(self) -> None:  # the runtime's
        raise NotImplementedError

    def _enter(self) -> None:
        with self._idle:
            if self.retiring:
                raise Retired(self.key)
            if self.inflight >= self.max_queue_size:
                self.meter.overloaded.inc()
                raise Overloaded(
                    f"endpoint {self.key}: {self.inflight} requests are already waiting (aux config max_queue_size "
                    f"{self.max_queue_size}); retry shortly",
                    retry_after=1.0,
                )
            self.inflight += 1
            self.requests += 1

    def _leave(self) -> None:
        with self._idle:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.notify_all()

    def _in_thread(self, work: Future[T]) -> Future[T]:
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

    def retire(self, timeout: float = 30.0) -> bool:
        """Take no new requests, wait for those in flight, then close; False when some were still running.

        Requests that still run at the timeout are answered 503 with Retry-After once the runtime closes.
        """
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
        self.close()
        return drained
