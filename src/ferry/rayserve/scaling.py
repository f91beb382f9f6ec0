"""How the ingress deployment scales: on the requests in its own hands, not those waiting for a model.

Ray Serve's default policy counts every request a replica holds. An ingress replica holds each request
for its whole life, also while the model deployment works on it, so a slow model would grow the ingress
too. Each ingress replica reports two counts taken at the same instant (``record_autoscaling_stats``): the
requests its HTTP app holds (``HELD``) and those of them not waiting for a model deployment's answer
(``BUSY``). Serve averages both over the same look-back window, so their ratio is the share of the
ingress's requests that are its own work; ``ingress_policy`` applies that share to Serve's count of the
requests the replicas hold (which also sees those Ray holds before they reach the app, e.g. while pre/post
code starves the replica's event loop), adds the requests Serve queues for a replica, and sizes the
deployment on that. Pre/post load, and the replica's own per-request work, grow the ingress; model load
grows the model deployment; each on its own.

Why a share and not Serve's count less the requests waiting: the two are averaged over different spans
(Serve's count follows the handles' latest pushes, a report the replica's whole window), so at the start of
a model-bound load their difference ran ahead of the truth for a whole window and grew the ingress for
nothing (seen on the test cluster: 8 clients on a 200 ms model took the ingress to its maximum).
"""

from __future__ import annotations

import math
from typing import Any

HELD = "ferry_ingress_held_requests"
"""A custom autoscaling metric: the requests a replica's HTTP app holds."""
BUSY = "ferry_ingress_busy_requests"
"""A custom autoscaling metric: of those, the requests not waiting for a model deployment."""


class Held:
    """An ASGI app that counts the HTTP requests it holds (``now``): from a request's start to its answer sent."""

    def __init__(self, app: Any) -> None:
        self.app, self.now = app, 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan
            return await self.app(scope, receive, send)
        self.now += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.now -= 1


def model_waiting(plane: Any) -> int:
    """Requests in ``plane``'s runtimes that wait for a model deployment now (``RayEngine.waiting``)."""
    return sum(getattr(runtime.engine, "waiting", 0) for runtime in plane.table.runtimes.values())


def stats(held: int, plane: Any) -> dict[str, float]:
    """An ingress replica's report: the ``held`` requests, and those of them not waiting for a model (a
    shadow copy waits outside any held request, hence never below 0)."""
    return {HELD: float(held), BUSY: float(max(held - model_waiting(plane), 0))}


def ingress_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Replicas = (the requests the replicas hold x the busy share + those Serve queues for one) / the target
    per replica (Ray applies the bounds and the up/down delays); with no reports yet, stay as many as there are."""
    metrics = ctx.aggregated_metrics or {}
    held, busy = metrics.get(HELD), metrics.get(BUSY)
    if not held or not busy:
        return ctx.current_num_replicas, {}
    inside = sum(held.values())
    share = sum(busy.values()) / inside if inside > 0 else 0.0
    queued = float(ctx.total_queued_requests or 0.0)
    load = max(float(ctx.total_num_requests) - queued, 0.0) * share + queued
    target = ctx.config.target_ongoing_requests or 1.0
    return max(math.ceil(load / target), 1), {}
