"""A real Prometheus scrapes a real `ferry serve`; every query of the exported Grafana dashboard returns data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferry.metrics.dashboard import queries
from tests.conftest import Ferry
from tests.e2e.test_metrics import ENDPOINT, add_example_metrics, sklearn_endpoint
from tests.prometheus import Prometheus
from tests.server import Server

pytestmark = pytest.mark.e2e

RANGE = "30s"
"""What Grafana would put for $__rate_interval at a 1 s scrape interval, give or take."""


def value(prom: Prometheus, promql: str) -> float:
    (series,) = prom.query(promql)
    return float(series["value"][1])


def test_dashboard_queries_return_data_from_a_real_prometheus(
    ferry_sqlite: Ferry, sklearn_example_model: Path, tmp_path: Path
):
    ferry_sqlite.service()
    sklearn_endpoint(ferry_sqlite, sklearn_example_model, "max_batch_size=8")
    add_example_metrics(ferry_sqlite)
    out = tmp_path / "dashboard.json"
    ferry_sqlite("dashboard", "export", "--output", str(out))
    dashboard = json.loads(out.read_text())
    exprs = queries(dashboard)
    assert any("ferry_batch_size" in q for q in exprs) and any("ferry_custom_y_total" in q for q in exprs)

    server = Server(tmp_path)
    try:
        server.wait_ready()
        with Prometheus([f"127.0.0.1:{server.port}"], scrape_interval="1s") as prom:
            prom.wait_for_targets_up(30)
            n = 40
            for i in range(n):
                assert server.serve(ENDPOINT, {"x0": i % 4, "x1": 1}).status_code == 200
            for _ in range(2):
                assert server.serve(ENDPOINT, {"x0": "bad", "x1": 1}).status_code == 422
            ok = f'sum(ferry_requests_total{{endpoint="{ENDPOINT}", code="200"}})'
            prom.wait_for(lambda: prom.query(ok) and value(prom, ok) == n, 20, f"{ok} == {n}")

            empty = [q for q in exprs if not prom.wait_for_data(q.replace("$__rate_interval", RANGE), 15)]
            assert not empty, f"queries without data: {empty}"

            assert value(prom, f'sum(ferry_requests_total{{endpoint="{ENDPOINT}", code="422"}})') == 2
            assert value(prom, f'sum(ferry_custom_x0_count{{endpoint="{ENDPOINT}"}})') == n  # "bad" was dropped
            assert value(prom, f'sum(ferry_custom_x0_bucket{{endpoint="{ENDPOINT}", le="1.0"}})') == n / 2
            assert value(prom, f'sum(ferry_custom_y_total{{endpoint="{ENDPOINT}"}})') == n
            assert value(prom, f'sum(ferry_batch_size_sum{{endpoint="{ENDPOINT}"}})') == n + 2
    finally:
        server.stop()
