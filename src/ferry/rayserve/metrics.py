"""Metrics under ``ferry serve --ray``: each replica serves its own ferry metrics; Prometheus finds them all.

An ingress or model replica starts a metrics server on a free port of ``FERRY_HOST`` and reports its
address in its heartbeat; ``GET /metrics/targets`` on the ingress lists every reported address in
Prometheus' HTTP service-discovery format, so one ``http_sd_configs`` entry scrapes the whole service
with the metric names of ``ferry serve``. Ingress replicas count the requests and their stages; model
replicas count the batches (``ferry_batch_*``) and their loads.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server

WILDCARDS = ("", "0.0.0.0", "::")


def serve_metrics(registry: CollectorRegistry, host: str) -> str:
    """Serve ``registry`` on a free port of ``host``; the "host:port" Prometheus should scrape."""
    server, _ = start_http_server(0, addr=host or "0.0.0.0", registry=registry)
    return f"{advertised(host)}:{server.server_port}"


def advertised(host: str) -> str:
    """The address others reach this replica at: ``host``, or the node's own address for a wildcard bind."""
    if host not in WILDCARDS:
        return host
    import ray

    return ray.util.get_node_ip_address()
