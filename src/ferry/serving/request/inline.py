"""CostMeter: measures a sync call's wall-clock cost to decide whether it may run on the event loop."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

INLINE_BUDGET_S = 0.001
"""Sync work costing under this runs on the event loop: handing it to a thread costs more than it does."""

BLOCKED_FACTOR = 5
"""An inline call that takes this many budgets of wall-clock time blocked the loop (a strike)."""

STRIKES = 3
"""Strikes among the last ``SAMPLES`` inline calls that send a stage to the pool for good.

One is not enough: while model threads run, an inline call now and then waits a GIL switch interval
(5 ms) or two for the interpreter, and one such wait must not send cheap code to the pool, where every
call then pays a thread hop. Code that blocks (sleep, I/O) blocks on most calls and strikes out at once.
"""

SAMPLES = 8
"""Calls measured in the pool before a stage may move onto the loop."""


class CostMeter:
    """Decides, per stage, between the event loop and a thread by measured wall-clock seconds.

    In the pool a call's wall time also counts waits for the GIL, so the fastest of the last few calls
    is the estimate: a call that sleeps or does I/O is never fast, cheap code sometimes is. Inline, the
    average wall time must stay under the budget, and ``STRIKES`` of the last few calls over
    ``BLOCKED_FACTOR`` budgets (blocking calls) send the stage to the pool for good. ``forbid_inline`` does
    the same up front (code that calls ``send_request``).
    """

    def __init__(self, budget_s: float = INLINE_BUDGET_S) -> None:
        self.budget_s = budget_s
        self.blocked = budget_s <= 0
        self.inline = False
        self._pool_times: deque[float] = deque(maxlen=SAMPLES)
        self._strikes: deque[bool] = deque(maxlen=SAMPLES)
        self._inline_average = 0.0

    @property
    def cheap(self) -> bool:
        """True when the next call should run inline on the event loop."""
        return self.inline

    def forbid_inline(self) -> None:
        """Never run this stage on the event loop again."""
        self.blocked = True
        self.inline = False

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in this thread, measuring its wall-clock time for the inline/pool choice."""
        inline = self.inline
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            elapsed = time.perf_counter() - started
            if inline:
                self._after_inline(elapsed)
            else:
                self._after_pool(elapsed)

    def _after_pool(self, elapsed: float) -> None:
        self._pool_times.append(elapsed)
        if not self.blocked and len(self._pool_times) == SAMPLES and min(self._pool_times) < self.budget_s:
            self.inline = True
            self._inline_average = min(self._pool_times)

    def _after_inline(self, elapsed: float) -> None:
        self._strikes.append(elapsed > BLOCKED_FACTOR * self.budget_s)
        if sum(self._strikes) >= STRIKES:
            self.forbid_inline()
            return
        self._inline_average = 0.9 * self._inline_average + 0.1 * elapsed
        if self._inline_average >= self.budget_s:  # grew costly: measure it in the pool again
            self.inline = False
            self._pool_times.clear()
