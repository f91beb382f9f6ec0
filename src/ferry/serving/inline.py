"""CostMeter: measures a sync call's CPU cost to decide whether it may run on the event loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

INLINE_BUDGET_S = 0.001
"""Sync work averaging under this runs on the event loop: handing it to a thread costs more than it does."""


class CostMeter:
    """Average CPU seconds per call (unknown until measured, so first calls are treated as costly)."""

    def __init__(self, budget_s: float = INLINE_BUDGET_S) -> None:
        self.budget_s = budget_s
        self.average = float("inf")

    @property
    def cheap(self) -> bool:
        return self.average < self.budget_s

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        started = time.thread_time()  # CPU time of this thread: waiting for the GIL does not count
        try:
            return fn(*args)
        finally:
            elapsed = time.thread_time() - started
            self.average = elapsed if self.average == float("inf") else 0.9 * self.average + 0.1 * elapsed
