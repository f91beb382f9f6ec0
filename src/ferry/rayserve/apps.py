"""Which Ray Serve application runs which endpoint version, and with what replicas: pure, no Ray import."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ferry.control.aux_config import RayAux
from ferry.control.spec import EndpointSpec

MODEL_DEPLOYMENT = "model"
"""The one deployment of each model application."""
INGRESS_DEPLOYMENT = "ingress"
UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def ingress_app(service_id: str) -> str:
    """The application that answers a service's HTTP routes."""
    return f"ferry-{service_id[:12]}"


def model_app(service_id: str, spec: EndpointSpec) -> str:
    """The application of one endpoint version as ``spec`` describes it.

    The name carries a digest of the whole spec: a changed version (new model, new code, new settings)
    is a new application that starts and warms beside the old one, which is deleted once no ingress
    routes to it. The ingress replicas work the same name out from the same spec.
    """
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:10]
    readable = UNSAFE.sub("_", spec.key)[:40]
    return f"{ingress_app(service_id)}-{readable}-{digest}"


def model_options(spec: EndpointSpec) -> dict[str, Any]:
    """``Deployment.options`` for the model deployment, from the spec's aux ``ray.*`` keys (defaults else)."""
    ray = RayAux.model_validate(spec.aux_config.get("ray") or {})
    return {
        "name": MODEL_DEPLOYMENT,
        "max_ongoing_requests": ray.max_ongoing_requests,
        "autoscaling_config": {
            "min_replicas": ray.min_replicas,
            "initial_replicas": max(ray.min_replicas, 1),
            "max_replicas": ray.max_replicas,
            "target_ongoing_requests": ray.target_ongoing_requests,
        },
        "ray_actor_options": {"num_cpus": ray.num_cpus, "num_gpus": ray.num_gpus},
    }
