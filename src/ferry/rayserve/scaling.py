"""How the ingress deployment scales: on the requests its replicas are running pre/post code for.

Ray Serve's default policy counts every request a replica holds. An ingress replica holds each request
for its whole life, also while the model deployment works on it, so a slow model would grow the ingress
too. Each ingress replica reports instead how many of its requests are not waiting for a model
(``record_autoscaling_stats``), and ``ingress_policy`` sizes the deployment on that sum: pre/post load
grows the ingress, model load grows the model deployment, each on its own.
"""

from __future__ import annotations

import math
from typing import Any

PREPOST = "ferry_prepost_requests"
"""The custom autoscaling metric: requests in a replica that are in preprocess or postprocess (or queued
for them), not waiting for a model deployment."""


def prepost_requests(plane: Any) -> float:
    """Requests in ``plane``'s runtimes minus those waiting on a model deployment (``RayEngine.waiting``)."""
    runtimes = list(plane.table.runtimes.values())
    running = sum(runtime.inflight for runtime in runtimes)
    waiting = sum(getattr(runtime.engine, "waiting", 0) for runtime in runtimes)
    return float(max(running - waiting, 0))


def ingress_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Replicas = pre/post requests over all replicas / the target per replica (Ray applies the bounds and
    the up/down delays); with no reports yet, stay as many as there are."""
    reports = (ctx.aggregated_metrics or {}).get(PREPOST)
    if not reports:
        return ctx.current_num_replicas, {}
    target = ctx.config.target_ongoing_requests or 1.0
    return max(math.ceil(sum(reports.values()) / target), 1), {}
