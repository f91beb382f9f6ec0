"""Prometheus HTTP service discovery for a service whose processes each serve their own metrics.

Under ``ferry serve --ray`` every ingress and model replica serves ferry's metrics on a port of its own and
reports that address in its heartbeat; ``GET /metrics/targets`` lists them in the http_sd format, so one
``http_sd_configs`` entry scrapes the whole service. Plain ``ferry serve`` reports none: it is scraped at its
HTTP port.
"""

from __future__ import annotations

from typing import Any


def targets(service_id: str, states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prometheus http_sd groups: one per reporting process, labelled with the service, role and endpoint."""
    groups = []
    for state in states:
        if "metrics" not in state:
            continue
        labels = {"ferry_service": service_id, "ferry_role": state.get("role", "serve")}
        if state.get("endpoint"):
            labels["ferry_endpoint"] = state["endpoint"]
        groups.append({"targets": [state["metrics"]], "labels": labels})
    return groups
