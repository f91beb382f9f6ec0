"""GET /metrics of a real `ferry serve`: exact counts after known requests, custom statistics, --workers 2."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ferry.cli.context import Context
from tests.conftest import Ferry
from tests.e2e.conftest import FAST_POLL
from tests.e2e.test_examples import EXAMPLES, add, upload
from tests.server import Server

pytestmark = pytest.mark.e2e

ENDPOINT = "test_model_sklearn"
FLUSH_S = 0.5
"""How stale another worker's part of a scrape may be (serving/revisions/reconciler.py METRICS_EVERY_S)."""


def scrape(server: Server) -> dict[tuple[str, frozenset], float]:
    """One scrape, parsed as Prometheus would: (sample name, labels) -> value."""
    answer = server.client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    if "endpoint" in labels:
        labels.setdefault("version", "")
    return samples.get((name, frozenset(labels.items())), 0.0)


def post_on_a_new_connection(server: Server, path: str, body: dict) -> int:
    """POST ``body`` on a connection of its own (closed after): its status. Plain http.client, as an httpx
    client a request would cost ~50 ms, most of the time a test of 120 such requests takes."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def sklearn_endpoint(ferry: Ferry, model: Path, *aux: str, endpoint: str = ENDPOINT) -> None:
    """The sklearn example's ``model`` as its README adds it (its preprocess reports x0, x1 and y)."""
    upload(ferry, "train sklearn model", model)
    add(ferry, "", "sklearn", endpoint, EXAMPLES / "sklearn" / "preprocess.py", "--name", "train sklearn model",
        *(("--aux-config", *aux) if aux else ()))  # fmt: skip


def add_example_metrics(ferry: Ferry, *extra: str, endpoint: str = ENDPOINT) -> None:
    ferry("metrics", "add", "--endpoint", endpoint, "--log-freq", "1", "--variable-scalar", "x0=-10/10/1",
          "x1=-10/10/1", "--variable-enum", "y=0,1", *extra)  # fmt: skip


@pytest.fixture(scope="module")
def sklearn_server(e2e_home: Path, e2e_ferry: Ferry, e2e_service: str, sklearn_example_model: Path) -> Iterator[Server]:
    """One `ferry serve` for the tests here that need no start flag of their own, started with ENDPOINT and its
    metrics already in the revision it loads first. Its counters are shared: a test counts what it adds."""
    sklearn_endpoint(e2e_ferry, sklearn_example_model)
    add_example_metrics(e2e_ferry)
    srv = Server(e2e_home.parent, "--id", e2e_service, env=FAST_POLL)
    try:
        srv.wait_ready()
        srv.wait_endpoint(ENDPOINT, {"x0": 1, "x1": 1})
        yield srv
    finally:
        srv.stop()


def added(before: dict, after: dict) -> dict:
    """What each sample grew by from the scrape ``before`` to the scrape ``after``."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def test_counts_exact_after_known_requests(sklearn_server: Server):
    before = scrape(sklearn_server)
    good = [(1, 2), (-1, -2), (0.5, 0.5), (3, -7), (-9.5, 2)]
    for x0, x1 in good:
        assert sklearn_server.serve(ENDPOINT, {"x0": x0, "x1": x1}).status_code == 200
    assert sklearn_server.serve(ENDPOINT, {"x0": "abc", "x1": 1}).status_code == 422  # x0 dropped, x1 counted
    assert sklearn_server.serve("nope", {}).status_code == 404
    bad_json = sklearn_server.client.post(
        f"/serve/{ENDPOINT}", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400

    after = scrape(sklearn_server)
    s = added(before, after)  # the module's server: counts from here on, exact
    e = dict(endpoint=ENDPOINT)
    assert sample(s, "ferry_requests_total", code="200", **e) == 5
    assert sample(s, "ferry_requests_total", code="422", **e) == 1
    assert sample(s, "ferry_requests_total", code="400", **e) == 1  # refused before routing, still its endpoint
    assert sample(s, "ferry_requests_total", code="404", endpoint="") == 1
    assert sample(s, "ferry_request_duration_seconds_count", **e) == 6
    assert sample(s, "ferry_stage_duration_seconds_count", stage="preprocess", **e) == 6
    assert sample(s, "ferry_stage_duration_seconds_count", stage="postprocess", **e) == 5
    assert sample(s, "ferry_custom_x0_count", **e) == 5
    assert ("ferry_custom_x0_sum", frozenset({**e, "version": ""}.items())) not in s  # buckets below 0: no _sum
    assert sample(s, "ferry_custom_x0_bucket", le="0.0", **e) == 2  # -1 and -9.5
    assert sample(s, "ferry_custom_x0_bucket", le="1.0", **e) == 4
    assert sample(s, "ferry_custom_x1_count", **e) == 6
    labels = {v: sample(s, "ferry_custom_y_total", value=v, **e) for v in ("0", "1", "other")}
    assert labels == {"0": 3, "1": 2, "other": 0}  # the example's model: class 1 when x0 + x1 > 0
    assert sample(after, "ferry_loaded_revision") >= 3  # create, add, metrics add
    assert sample(after, "ferry_model_load_seconds", **e) > 0
    assert sample(after, "ferry_process_cpu_seconds_total", pid=str(sklearn_server.proc.pid)) > 0
    assert sample(after, "ferry_process_resident_memory_bytes", pid=str(sklearn_server.proc.pid)) > 10e6


def test_metric_config_reaches_the_running_server(
    e2e_ferry: Ferry, sklearn_server: Server, sklearn_example_model: Path
):
    """Its own endpoint, added to the running server without metrics, then given them and one taken away."""
    ferry, server, endpoint = e2e_ferry, sklearn_server, "configured_live"
    sklearn_endpoint(ferry, sklearn_example_model, endpoint=endpoint)
    server.wait_endpoint(endpoint, {"x0": 1, "x1": 1})
    assert sample(scrape(server), "ferry_custom_x0_count", endpoint=endpoint) == 0  # nothing configured yet
    add_example_metrics(ferry, endpoint=endpoint)

    def counted() -> bool:
        server.serve(endpoint, {"x0": 1, "x1": 1})
        return sample(scrape(server), "ferry_custom_x0_count", endpoint=endpoint) > 0

    server.wait_for(counted, 10, "x0 counted after `metrics add`")
    ferry("metrics", "remove", "--endpoint", endpoint, "--variable", "x0")
    ctx = Context()
    head = ctx.store.head(ctx.service.id)
    server.wait_for(lambda: server.client.get("/health/ready").json().get("revision") == head, 10, "removal applied")
    before = sample(scrape(server), "ferry_custom_x0_count", endpoint=endpoint)
    x1_before = sample(scrape(server), "ferry_custom_x1_count", endpoint=endpoint)
    for _ in range(3):
        server.serve(endpoint, {"x0": 1, "x1": 1})
    after = scrape(server)
    assert sample(after, "ferry_custom_x0_count", endpoint=endpoint) == before  # removed: no longer logged
    assert sample(after, "ferry_custom_x1_count", endpoint=endpoint) == x1_before + 3


def ready_instances(ferry: Ferry) -> int:
    """How many instances `ferry status` shows with the endpoint loaded."""
    instances = ferry("status", "--json").json()["instances"]
    return sum(inst["state"].get("endpoints", {}).get(ENDPOINT, {}).get("state") == "ready" for inst in instances)


def test_two_workers_one_scrape_counts_both(ferry_sqlite: Ferry, sklearn_example_model: Path, tmp_path: Path):
    ferry_sqlite.service()
    sklearn_endpoint(ferry_sqlite, sklearn_example_model)
    add_example_metrics(ferry_sqlite)
    server = Server(tmp_path, "--workers", "2")
    try:
        server.wait_ready()
        server.wait_for(lambda: ready_instances(ferry_sqlite) == 2, 30, "two workers serving the endpoint")
        n = 120
        for i in range(n):  # a new connection each time: the kernel spreads them over both workers
            assert post_on_a_new_connection(server, f"/serve/{ENDPOINT}", {"x0": 1, "x1": i % 3}) == 200
        counted: list[dict] = []

        def one_scrape_counts_all() -> bool:
            counted.append(scrape(server))
            return sample(counted[-1], "ferry_requests_total", code="200", endpoint=ENDPOINT) == n

        # the other worker's part of a scrape is at most FLUSH_S old: all n within FLUSH_S, and a margin
        server.wait_for(one_scrape_counts_all, FLUSH_S + 0.5, "one scrape counting both workers' requests")
        s = counted[-1]
        per_worker: list[int] = []

        def both_heard() -> bool:  # each worker's count, one heartbeat after its last request
            instances = ferry_sqlite("status", "--json").json()["instances"]
            per_worker[:] = [inst["state"]["endpoints"][ENDPOINT].get("requests", 0) for inst in instances]
            return sum(per_worker) == n

        server.wait_for(both_heard, 10, "both workers' counts in `ferry status`")
    finally:
        server.stop()
    assert sorted(per_worker)[0] > 0, f"one worker served everything: {per_worker}"
    e = dict(endpoint=ENDPOINT)
    assert sample(s, "ferry_requests_total", code="200", **e) == n  # both workers' requests, one scrape
    assert sample(s, "ferry_request_duration_seconds_count", **e) == n
    x1 = {le: sample(s, "ferry_custom_x1_bucket", le=le, **e) for le in ("0.0", "1.0", "2.0")}
    assert x1 == {"0.0": n / 3, "1.0": 2 * n / 3, "2.0": n}  # x1 = i % 3
    pids = {dict(labels)["pid"] for name, labels in s if name == "ferry_process_cpu_seconds_total"}
    assert len(pids) == 2
    assert len([1 for name, _ in s if name == "ferry_loaded_revision"]) == 2


def test_no_metrics_turns_them_off(ferry_sqlite: Ferry, tmp_path: Path):
    ferry_sqlite.service()
    code = tmp_path / "probe.py"
    code.write_text(
        "class Preprocess:\n"
        "    def process(self, data, state, collect_custom_statistics_fn=None):\n"
        "        return {'collect': collect_custom_statistics_fn is not None}\n"
    )
    ferry_sqlite("model", "add", "--engine", "custom", "--endpoint", "probe", "--preprocess", str(code))
    ferry_sqlite("metrics", "add", "--endpoint", "probe", "--log-freq", "1", "--variable-value", "v")
    server = Server(tmp_path, "--no-metrics")
    try:
        server.wait_ready()
        assert server.wait_endpoint("probe", {}) == {"collect": False}
        answer = server.client.get("/metrics")
    finally:
        server.stop()
    assert answer.status_code == 404 and "--no-metrics" in answer.json()["error"]
