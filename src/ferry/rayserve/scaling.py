"""How the ingress deployment scales: on the requests in its own hands, not those waiting for a model.

Ray Serve's default policy counts every request a replica holds. An ingress replica holds each request
for its whole life, also while the model deployment works on it, so a slow model would grow the ingress
too. Each ingress replica reports the requests its HTTP app holds less those waiting for a model
deployment's answer, both counted at the same instant (``record_autoscaling_stats``, ``busy``);
``ingress_policy`` sums the replicas' reports, as Serve averages them over its look-back window, adds the
requests Serve queues for a replica, and sizes the deployment on that. Pre/post load, and the replica's
own per-request work, grow the ingress; model load grows the model deployment; each on its own.

Why one report and not Serve's count less a report of those waiting: the two are averaged over different
spans (Serve's count comes from the handles' latest pushes, a report from the replica's whole window), so
at the start of a model-bound load the difference runs ahead of the truth for a whole window and grew the
ingress for nothing (seen on the test cluster: 8 clients on a 200 ms model, the ingress to its maximum).
"""

from __future__ import annotations

import math
from typing import Any

BUSY = "ferry_ingress_busy_requests"
"""The custom autoscaling metric: a replica's requests in pre/post or HTTP, not waiting for a model."""


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


def busy(held: int, plane: Any) -> float:
    """Of the ``held`` requests an ingress replica's HTTP app holds, those not waiting for a model (a
    shadow copy waits outside any held request, hence never below 0)."""
    return float(max(held - model_waiting(plane), 0))


def ingress_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Replicas = (the replicas' busy requests + those Serve queues for one) / the target per replica (Ray
    applies the bounds and the up/down delays); with no reports from the replicas yet, stay as many as there are."""
    reports = (ctx.aggregated_metrics or {}).get(BUSY)
    if not reports:
        return ctx.current_num_replicas, {}
    load = sum(reports.values()) + float(ctx.total_queued_requests or 0.0)
    target = ctx.config.target_ongoing_requests or 1.0
    return max(math.ceil(load / target), 1), {}
