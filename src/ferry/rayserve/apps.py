"""Which Ray Serve application runs which endpoint version, and with what replicas: pure, no Ray import."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from ferry.control.aux_models import RayAux
from ferry.control.spec import EndpointSpec

QUIET = {"enable_access_log": False}
"""Replicas log no line per request (Ray Serve's default does, in every replica, on the request path)."""
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


@dataclass(frozen=True)
class Pace:
    """How fast every deployment's replica count follows the load (FERRY_RAY_* settings; aux ``ray.*`` wins)."""

    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 120.0
    look_back_s: float = 10.0


def ray_aux(spec: EndpointSpec) -> RayAux:
    """The version's aux ``ray.*`` keys, defaults filled in."""
    return RayAux.model_validate(spec.aux_config.get("ray") or {})


def colocated(spec: EndpointSpec) -> bool:
    """Whether the version's model runs inside the ingress replicas (aux ``ray.colocate``): no model app."""
    return ray_aux(spec).colocate


def bridged(spec: EndpointSpec) -> bool:
    """Whether a new or changed version loads in the ingress replicas while its model deployment starts
    (aux ``ray.bridge``, on unless the version is colocated or asks for GPUs the ingress does not hold)."""
    ray = ray_aux(spec)
    return ray.bridge and not ray.colocate and ray.num_gpus == 0


def model_options(spec: EndpointSpec, pace: Pace = Pace()) -> dict[str, Any]:
    """``Deployment.options`` for the model deployment, from the spec's aux ``ray.*`` keys (defaults else).

    Ray Serve's own policy scales it: replicas = requests in flight / ``ray.target_ongoing_requests``.
    """
    ray = ray_aux(spec)
    up = pace.upscale_delay_s if ray.upscale_delay_s is None else ray.upscale_delay_s
    down = pace.downscale_delay_s if ray.downscale_delay_s is None else ray.downscale_delay_s
    return {
        "name": MODEL_DEPLOYMENT,
        "logging_config": QUIET,
        "max_ongoing_requests": ray.max_ongoing_requests,
        "autoscaling_config": {
            "min_replicas": ray.min_replicas,
            "initial_replicas": max(ray.min_replicas, 1),
            "max_replicas": ray.max_replicas,
            "target_ongoing_requests": ray.target_ongoing_requests,
            "upscale_delay_s": up,
            "downscale_delay_s": down,
            **_window(pace),
        },
        "ray_actor_options": {"num_cpus": ray.num_cpus, "num_gpus": ray.num_gpus},
    }


def ingress_options(low: int, high: int, target: float, pace: Pace = Pace()) -> dict[str, Any]:
    """``Deployment.options`` for the ingress: ``low`` to ``high`` replicas, scaled by ``scaling.ingress_policy``
    on the requests in pre/post (``target`` per replica), not on those waiting for a model deployment."""
    return {
        "name": INGRESS_DEPLOYMENT,
        "logging_config": QUIET,
        "max_ongoing_requests": 1024,
        "autoscaling_config": {
            "min_replicas": low,
            "initial_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": target,
            "upscale_delay_s": pace.upscale_delay_s,
            "downscale_delay_s": pace.downscale_delay_s,
            **_window(pace),
            "policy": {"policy_function": "ferry.rayserve.scaling:ingress_policy"},
        },
        "ray_actor_options": {"num_cpus": 1},
    }


def _window(pace: Pace) -> dict[str, float]:
    """The look-back window, with the (deprecated) metrics interval Ray still wants below it."""
    return {"look_back_period_s": pace.look_back_s, "metrics_interval_s": min(10.0, pace.look_back_s / 2)}
