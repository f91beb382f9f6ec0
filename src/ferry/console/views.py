"""What each console page shows, gathered from the store and the registry as plain values (no HTML here)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ferry.console.charts import chart
from ferry.control.declarative import diff
from ferry.control.engine_names import batching_summary
from ferry.control.spec import EndpointSpec, ServiceConfig
from ferry.control.store import InstanceRecord, Store
from ferry.registry.models import ModelRegistry

PAGE_SIZE = 20
"""Revisions a page of history shows."""


@dataclass(frozen=True)
class Views:
    """The console's reads: each method one page's values."""

    store: Store
    registry: ModelRegistry

    def services(self) -> list[dict[str, Any]]:
        now = time.time()
        rows = []
        for service in self.store.list_services():
            live = [i for i in self.store.list_instances(service.id) if i.is_live(now)]
            rows.append(
                {
                    "id": service.id,
                    "name": service.name,
                    "project": service.project,
                    "head": self.store.head(service.id),
                    "instances": len(live),
                    "requests": sum(_count(i, "requests") for i in live),
                    "errors": sum(_count(i, "errors") for i in live),
                    **_now(live),
                }
            )
        return rows

    def service(self, service_id: str) -> dict[str, Any]:
        service = self.store.get_service(service_id)
        revision = self.store.get_revision(service_id)
        instances = self.store.list_instances(service_id)
        return {
            "service": service,
            "revision": revision.number,
            "endpoints": [_endpoint(key, spec, instances) for key, spec in sorted(revision.config.endpoints.items())],
            "canaries": _canaries(revision.config),
            "rules": [
                {
                    "endpoint": key,
                    "engine": rule.template.engine,
                    "query": rule.query.model_dump(exclude_defaults=True),
                    "max_versions": rule.max_versions,
                }
                for key, rule in sorted(revision.config.auto_update.items())
            ],
            "shadows": [
                {"endpoint": key, "target": s.target, "fraction": s.fraction}
                for key, s in sorted(revision.config.shadows.items())
            ],
            "metrics": [
                {"endpoint": key, "variables": sorted(m.variables)}
                for key, m in sorted(revision.config.metrics.items())
            ],
        }

    def revisions(self, service_id: str, page: int) -> dict[str, Any]:
        service = self.store.get_service(service_id)
        history = sorted(self.store.list_revisions(service_id), key=lambda r: r.number, reverse=True)
        pages = max(1, -(-len(history) // PAGE_SIZE))
        page = min(max(1, page), pages)
        shown = history[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        head = history[0].number if history else 1
        return {"service": service, "revisions": shown, "page": page, "pages": pages, "head": head}

    def diff(self, service_id: str, old: int, new: int) -> dict[str, Any]:
        """What turns revision ``old`` into ``new``: the entries ``ferry apply --dry-run`` would list."""
        service = self.store.get_service(service_id)
        before, after = self.store.get_revision(service_id, old), self.store.get_revision(service_id, new)
        return {"service": service, "old": before, "new": after, "changes": diff(before.config, after.config)}

    def instances(self, service_id: str) -> dict[str, Any]:
        service = self.store.get_service(service_id)
        now = time.time()
        return {"service": service, "instances": [_instance(i, now) for i in self.store.list_instances(service_id)]}

    def models(self) -> list[Any]:
        return sorted(self.registry.list(), key=lambda m: m.created_at, reverse=True)


def _count(instance: InstanceRecord, key: str) -> float:
    return sum(float(ep.get(key) or 0) for ep in instance.state.get("endpoints", {}).values())


def _now(live: list[InstanceRecord]) -> dict[str, Any]:
    """Requests/s and the share of them that failed, over the live instances' last heartbeat interval."""
    rate, errors = sum(_count(i, "requests_per_s") for i in live), sum(_count(i, "errors_per_s") for i in live)
    return {"per_s": round(rate, 1), "error_rate": f"{100 * errors / rate:.1f} %" if rate else "-"}


def _endpoint(key: str, spec: EndpointSpec, instances: list[InstanceRecord]) -> dict[str, Any]:
    series = [i.state.get("endpoints", {}).get(key, {}).get("series") or [] for i in instances if i.is_live()]
    return {
        "chart": chart(series),
        "key": key,
        "engine": spec.engine,
        "version": spec.version,
        "model_id": spec.model_id,
        "batching": batching_summary(spec.engine, spec.aux_config),
        "states": [
            {"instance": i.id[:8], **i.state.get("endpoints", {}).get(key, {"state": "not reported"})}
            for i in instances
        ],
    }


def _canaries(config: ServiceConfig) -> list[dict[str, Any]]:
    """Each canary's split: its targets (fixed endpoints, or the newest versions under a prefix) and weights."""
    shown = []
    for key, canary in sorted(config.canaries.items()):
        weights = list(canary.weights)
        if canary.input_endpoints:
            targets = list(canary.input_endpoints)
        else:
            targets = [f"{canary.input_endpoint_prefix}* newest #{n + 1}" for n in range(len(weights))]
        total = sum(weights) or 1.0
        split = [
            {"target": t, "weight": w, "percent": round(100 * w / total, 1)}
            for t, w in zip(targets, weights, strict=False)
        ]
        shown.append({"endpoint": key, "split": split})
    return shown


def _instance(instance: InstanceRecord, now: float) -> dict[str, Any]:
    state = instance.state
    return {
        "id": instance.id,
        "host": instance.host,
        "pid": instance.pid,
        "revision": instance.revision,
        "started_at": float(state.get("started_at", instance.started_at)),
        "heartbeat_age_s": round(now - instance.heartbeat_at, 1),
        "live": instance.is_live(now),
        "cpu_percent": state.get("cpu_percent"),
        "rss_mb": round(float(state.get("rss_bytes") or 0) / 2**20),
        "log": list(state.get("log", []))[-20:],
    }
