"""How long a batch still waits for requests: the queue delay, cut short once arrivals have stopped coming.

Requests come in bursts: clients answer the previous batch's replies, a load balancer passes a group along. While a
burst lasts, waiting fills the batch; once it has ended, waiting out the rest of ``max_queue_delay_ms`` only holds
the batch back, and on a closed loop of clients (every one waiting for its answer, none left to send) it costs the
whole delay on every batch: 60 % of the sklearn job's throughput at 1 ms. So a batch stops waiting when no request
has arrived for a few times the usual gap between arrivals that joined a queue already holding requests (the gaps
inside a batch, not those between batches). A burst read in one event-loop turn has gaps of microseconds: its
batch goes at once. Requests known to be on their way (in a preprocess running in a thread: the batcher's
``coming``) are always waited for, up to the delay: their gaps say nothing about the clients.
"""

from __future__ import annotations

FACTOR = 3.0
"""Idle this many usual gaps, and the burst is taken as over."""

WEIGHT = 0.1
"""Weight of a new gap in the running average."""


class Patience:
    """The usual gap between arrivals inside a batch, and from it when a batch stops waiting."""

    def __init__(self, factor: float = FACTOR) -> None:
        self.factor = factor
        self.gap_s: float | None = None
        """Running average of the gaps; None until a request has joined a non-empty queue."""

    def observe(self, gap_s: float) -> None:
        """A request joined the queue ``gap_s`` after the request before it, which is still queued."""
        self.gap_s = gap_s if self.gap_s is None else self.gap_s + WEIGHT * (gap_s - self.gap_s)

    def until(self, last_arrival: float, deadline: float) -> float:
        """When a batch whose last request arrived at ``last_arrival`` stops waiting: its queue delay's
        ``deadline``, or sooner once it has been idle ``factor`` usual gaps (the full delay until a gap is known)."""
        if self.gap_s is None:
            return deadline
        return min(deadline, last_arrival + self.factor * self.gap_s)
