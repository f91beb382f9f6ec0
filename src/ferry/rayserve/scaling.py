"""How the ingress deployment scales: on its requests that are not waiting for a model deployment.

Ray Serve's default policy counts every request a replica holds. An ingress replica holds each request
for its whole life, also while the model deployment works on it, so a slow model would grow the ingress
too. Each ingress replica reports how many of its requests wait for a model deployment's answer
(``record_autoscaling_stats``); ``ingress_policy`` takes those from the ingress's ongoing requests as Serve
counts them (queued for a replica, in Ray's HTTP bridge, in pre/post or waiting) and sizes the deployment
on the rest. Pre/post load, and the replica's own per-request work, grow the ingress; model load grows the
model deployment; each on its own.
"""

from __future__ import annotations

import math
from typing import Any

WAITING = "ferry_model_waiting_requests"
"""The custom autoscaling metric: a replica's requests waiting for a model deployment's answer."""


def model_waiting(plane: Any) -> float:
    """Requests in ``plane``'s runtimes that wait for a model deployment now (``RayEngine.waiting``)."""
    return float(sum(getattr(runtime.engine, "waiting", 0) for runtime in plane.table.runtimes.values()))


def ingress_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Replicas = (ongoing requests - those waiting for a model) / the target per replica (Ray applies the
    bounds and the up/down delays); with no reports from the replicas yet, stay as many as there are."""
    reports = (ctx.aggregated_metrics or {}).get(WAITING)
    if not reports:
        return ctx.current_num_replicas, {}
    busy = max(float(ctx.total_num_requests) - sum(reports.values()), 0.0)
    target = ctx.config.target_ongoing_requests or 1.0
    return max(math.ceil(busy / target), 1), {}
