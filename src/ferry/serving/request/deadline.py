"""Deadline: a request timeout at the cost of one timer handle (``asyncio.timeout`` adds two coroutines a request)."""

from __future__ import annotations

import asyncio


class Deadline:
    """Cancels the current task after ``seconds``; ``expired()`` tells that cancellation from any other.

    Use: ``deadline = Deadline(s)``, then ``try: await work`` / ``except CancelledError: if deadline.expired():
    raise Timeout`` / ``finally: deadline.disarm()``, as ``asyncio.timeout`` does it, uncancel included.
    """

    __slots__ = ("_cancelling", "_fired", "_handle", "_task")

    def __init__(self, seconds: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline needs a running task")
        self._task = task
        self._cancelling = task.cancelling() if hasattr(task, "cancelling") else 0  # Python 3.11+
        self._fired = False
        self._handle = task.get_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def disarm(self) -> None:
        self._handle.cancel()

    def expired(self) -> bool:
        """After a CancelledError: True when this deadline caused it (and no one else cancelled the task too)."""
        if not self._fired:
            return False
        uncancel = getattr(self._task, "uncancel", None)
        return uncancel is None or uncancel() <= self._cancelling
