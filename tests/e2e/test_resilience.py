"""A real `ferry serve` keeps going: heartbeats through a long load(), requests through a PostgreSQL outage."""

from __future__ import annotations

import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tests.conftest import Ferry
from tests.postgres import Postgres
from tests.server import Server

pytestmark = pytest.mark.e2e

LOAD_S = 6.0
"""How long the slow endpoint's load() sleeps: far above the 0.5 s heartbeat, short enough for the suite."""
OUTAGE_S = 30.0


def code(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def upload_model(ferry: Ferry, tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    joblib.dump(LogisticRegression().fit(x, (x.sum(axis=1) > 0).astype(int)), tmp_path / "m.pkl")
    out = ferry("model", "upload", "--name", "logreg", "--project", "e2e", "--path", str(tmp_path / "m.pkl")).out
    return out.strip().rsplit("=", 1)[1]


def test_a_long_load_keeps_the_instance_in_status_as_loading(ferry_sqlite: Ferry, tmp_path: Path):
    """A 6 s load() with 0.5 s heartbeats: `ferry status --json` keeps listing the instance, endpoint loading."""
    ferry_sqlite.service()
    slow = code(tmp_path, "slow", f"""
        import time
        class Preprocess:
            def load(self, local_file_name):
                time.sleep({LOAD_S})
            def process(self, data, state, collect=None):
                return {{"loaded": True}}
        """)  # fmt: skip
    server = Server(tmp_path, env={"FERRY_HEARTBEAT_INTERVAL": "0.5"})
    try:
        server.wait_ready()
        model_id = upload_model(ferry_sqlite, tmp_path)
        ferry_sqlite("model", "add", "--engine", "custom", "--endpoint", "slow", "--model-id", model_id,
                     "--preprocess", slow)  # fmt: skip
        seen: list[tuple[str, float]] = []
        deadline = time.monotonic() + LOAD_S + 20
        while server.serve("slow", {}).status_code != 200:
            (inst,) = ferry_sqlite("status", "--json").json()["instances"]  # listed: heard from within 2.5 s
            seen.append((inst["state"].get("endpoints", {}).get("slow", {}).get("state", "-"), inst["heartbeat_age_s"]))
            assert time.monotonic() < deadline, seen
            time.sleep(0.1)
        loading = [age for state, age in seen if state == "loading"]
        assert len(loading) >= 2 and max(loading) <= 1.5, seen
        assert server.serve("slow", {}).json() == {"loaded": True}
    finally:
        server.stop()


def tagged(tmp_path: Path, tag: str) -> str:
    return code(tmp_path, f"tag_{tag}", f"""
        class Preprocess:
            def process(self, data, state, collect=None):
                return {{"tag": "{tag}"}}
        """)  # fmt: skip


def test_postgres_down_30_s_serves_every_request_then_takes_a_change(postgres: Postgres, tmp_path: Path):
    """PostgreSQL stopped for 30 s under load: every request answers 200; a change made afterwards is served."""
    ferry = Ferry(tmp_path)
    ferry.service()
    ferry("model", "add", "--engine", "custom", "--endpoint", "m", "--preprocess", tagged(tmp_path, "before"))
    server = Server(tmp_path)
    answers: Counter[str] = Counter()
    stop = threading.Event()

    def clients() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                r = client.post("/serve/m", json={})
                answers[r.json()["tag"] if r.status_code == 200 else f"{r.status_code} {r.text}"] += 1
                time.sleep(0.005)

    try:
        server.wait_endpoint("m", {})
        worker = threading.Thread(target=clients)
        worker.start()
        try:
            server.wait_for(lambda: answers["before"] >= 100, what="100 answers before the outage")
            postgres.stop()
            down_at, served_before = time.monotonic(), answers.total()
            time.sleep(OUTAGE_S)
            assert server.client.get("/health/ready").status_code == 200  # still serving: still ready
            served_during = answers.total() - served_before
            postgres.start()
            outage = time.monotonic() - down_at
            during = dict(answers)
            ferry("model", "add", "--engine", "custom", "--endpoint", "m", "--preprocess", tagged(tmp_path, "after"))
            server.wait_for(lambda: answers["after"] > 0, timeout=30, what="the change made after the outage served")
        finally:
            stop.set()
            worker.join()
    finally:
        server.stop()
    assert outage >= OUTAGE_S
    assert set(during) == {"before"} and served_during > 100, (during, served_during)
    assert set(answers) == {"before", "after"}, answers  # no request failed, before, during or after
    assert "store unreachable" in server.log_path.read_text()


def test_a_store_down_at_start_is_waited_for(postgres: Postgres, tmp_path: Path):
    """`ferry serve --id S` with PostgreSQL down: 503 with the reason, then serving once the store is back; the
    default worker count (auto), which reads the endpoints, takes one."""
    ferry = Ferry(tmp_path)
    service = ferry.service()
    ferry("model", "add", "--engine", "custom", "--endpoint", "m", "--preprocess", tagged(tmp_path, "up"))
    postgres.stop()
    server = Server(tmp_path, "--id", service, env={"FERRY_STARTUP_TIMEOUT": "1", "FERRY_WORKERS": "auto"})
    try:
        server.wait_for(
            lambda: server.client.get("/health/ready").status_code == 503, what="503 while the store is down"
        )
        assert "with 1 worker(s) (auto: 1, as the store could not be read" in server.log(), server.log()
        ready = server.client.get("/health/ready").json()
        assert ready["status"] == "unavailable" and ready["reason"].startswith("store unreachable"), ready
        assert server.serve("m", {}).status_code in (404, 503)  # nothing served yet, and no 500
        postgres.start()
        assert server.wait_endpoint("m", {}, timeout=60) == {"tag": "up"}
        assert server.client.get("/health/ready").status_code == 200
    finally:
        server.stop()
    assert "store is unreachable" in server.log_path.read_text()
