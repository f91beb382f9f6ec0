"""The ingress deployment: ferry's ASGI app (every HTTP route, pre/post) in each Ray Serve replica.

Each replica is a ferry instance to the store: it follows the service's revisions with a
``RayReconciler``, heartbeats (``ferry status`` lists it) and keeps serving its last revision when the
store is unreachable. A replica starting while the store is unreachable stays in Serve's STARTING state
(no traffic) until its first revision is loaded: the replicas already running serve meanwhile.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ray import serve

from ferry.rayserve.engine import RayReconciler
from ferry.rayserve.metrics import serve_metrics
from ferry.rayserve.scaling import BUSY, HELD, Held, stats
from ferry.settings import Settings


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, env: dict[str, str]) -> None:
        os.environ.update(env)  # the launcher's FERRY_* settings (launcher.replica_env): create_app reads them

    def __serve_build_asgi_app__(self) -> Any:
        from ferry.server import create_app

        self.ferry_app = app = create_app(RayReconciler)
        app.startup_timeout = threading.TIMEOUT_MAX  # Serve routes to the replica once its lifespan started
        assert isinstance(app.reconciler, RayReconciler)  # the one create_app was given
        if app.plane.metrics is not None:
            app.reconciler.report["metrics"] = serve_metrics(app.plane.metrics.registry, Settings().host)
        self.held = Held(app)
        return self.held

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What ``scaling.ingress_policy`` reads: the requests this replica holds, and those not waiting for a model."""
        held = getattr(self, "held", None)
        return stats(held.now, self.ferry_app.plane) if held is not None else {HELD: 0.0, BUSY: 0.0}
