"""Requests and errors per second of each endpoint version, over the last heartbeat interval.

The heartbeat carries counts since each version loaded; a reader of the store (``ferry status``, the console)
sees one heartbeat at a time, so the instance works out the rate itself, from this heartbeat's counts and the last.
"""

from __future__ import annotations

import time
from typing import Any


class Rates:
    """Adds ``requests_per_s`` and ``errors_per_s`` to endpoint states that count requests."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int, int]] = {}

    def add(self, states: dict[str, dict[str, Any]], now: float | None = None) -> dict[str, dict[str, Any]]:
        """``states`` (endpoint -> state with ``requests`` and ``errors``), each given its rates since the last call
        (none on its first); a version replaced meanwhile (counts going down) starts again from its own."""
        now = time.monotonic() if now is None else now
        seen: dict[str, tuple[float, int, int]] = {}
        for key, state in states.items():
            if "requests" not in state:
                continue
            requests, errors = int(state["requests"]), int(state.get("errors") or 0)
            last = self._last.get(key)
            if last is not None and now > last[0] and requests >= last[1] and errors >= last[2]:
                seconds = now - last[0]
                state["requests_per_s"] = round((requests - last[1]) / seconds, 2)
                state["errors_per_s"] = round((errors - last[2]) / seconds, 2)
            seen[key] = (now, requests, errors)
        self._last = seen
        return states
