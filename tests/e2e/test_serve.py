"""`ferry serve` as users run it: a real process, driven by the real CLI and real HTTP."""

from __future__ import annotations

import socket
import textwrap
import threading
import time
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ferry.cli.workers import AUTO_MAX
from ferry.settings import usable_cores
from tests.conftest import Ferry, free_port
from tests.e2e.conftest import FAST_POLL
from tests.server import Server

pytestmark = pytest.mark.e2e

SKLEARN = Path(__file__).parents[2] / "examples" / "sklearn" / "preprocess.py"


def code(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def tagged(tmp_path: Path, tag: str) -> str:
    return code(
        tmp_path,
        f"tag_{tag}",
        f"""
        class Preprocess:
            def process(self, data, state, collect=None):
                return {{"tag": "{tag}"}}
        """,
    )


@pytest.fixture
def model_id(ferry_sqlite: Ferry, tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    joblib.dump(LogisticRegression().fit(x, (x.sum(axis=1) > 0).astype(int)), tmp_path / "m.pkl")
    out = ferry_sqlite("model", "upload", "--name", "logreg", "--project", "e2e", "--path", str(tmp_path / "m.pkl"))
    return out.out.strip().rsplit("=", 1)[1]


def add_tagged(ferry: Ferry, tmp_path: Path, endpoint: str, tag: str) -> None:
    """A custom endpoint NAME[/VERSION] whose answer is {"tag": tag}."""
    name, _, version = endpoint.partition("/")
    versioned = ["--version", version] if version else []
    add(ferry, "--engine", "custom", "--endpoint", name, *versioned, "--preprocess", tagged(tmp_path, tag))


def add(ferry: Ferry, *args: str) -> float:
    """Run `ferry model add ...`; returns the moment it returned."""
    ferry("model", "add", *args)
    return time.monotonic()


@pytest.mark.parametrize("flag", ["--port", "--grpc-port"])
def test_a_port_in_use_is_refused_before_anything_loads(ferry_sqlite: Ferry, flag: str):
    ferry_sqlite.service()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        ports = ["--port", port] if flag == "--port" else ["--port", str(free_port()), "--grpc-port", port]
        result = ferry_sqlite("serve", *ports, ok=False, process=True)
    assert result.code == 1, result.err
    assert f"127.0.0.1:{port}" in result.err and "in use" in result.err and flag in result.err, result.err
    assert "serving service" not in result.err  # refused before the server (and the models) started


def test_sklearn_served_within_two_seconds_of_add(ferry_sqlite: Ferry, model_id: str, tmp_path: Path):
    """With the default 1 s poll: the first sklearn endpoint (cold process), then a second one timed."""
    ferry_sqlite.service()
    server = Server(tmp_path, env={"FERRY_POLL_INTERVAL": "1.0"})
    try:
        server.wait_ready()
        add(ferry_sqlite, "--engine", "sklearn", "--endpoint", "test_model_sklearn", "--model-id", model_id,
            "--preprocess", str(SKLEARN))  # fmt: skip
        server.wait_for(lambda: server.post("/serve/test_model_sklearn", {"x0": 1, "x1": 2}).status_code == 200)
        assert server.post("/serve/test_model_sklearn", {"x0": 1, "x1": 2}).json() == {"y": [1]}
        assert server.post("/serve/test_model_sklearn/", {"x0": -1, "x1": -2}).json() == {"y": [0]}
        missing = server.post("/serve/test_model_sklearn", {"x0": 1})
        assert missing.status_code == 422, missing.text
        assert missing.json()["error"] == (
            "endpoint test_model_sklearn: preprocess raised ValueError: expected a JSON object with "
            """"x0" and "x1", e.g. {"x0": 1, "x1": 2}; got {'x0': 1}"""
        )
        done = add(ferry_sqlite, "--engine", "sklearn", "--endpoint", "second", "--model-id", model_id,
                   "--preprocess", str(SKLEARN))  # fmt: skip
        server.wait_for(lambda: server.post("/serve/second", {"x0": 1, "x1": 2}).status_code == 200)
        assert time.monotonic() - done < 2.0
    finally:
        server.stop()


def test_changes_under_load_fail_no_request(e2e_ferry: Ferry, example_server: Server, tmp_path: Path):
    """Requests to /serve/m never fail while versions are added, replaced and removed."""
    add_tagged(e2e_ferry, tmp_path, "m/1", "1")
    example_server.wait_for(lambda: example_server.post("/serve/m", {}).status_code == 200)
    failures: list[str] = []
    seen: set[str] = set()
    answered = [0]
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=example_server.url, timeout=30) as client:
            while not stop.is_set():
                r = client.post("/serve/m", json={})
                answered[0] += 1
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    seen.add(r.json()["tag"])

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        add_tagged(e2e_ferry, tmp_path, "m/2", "2")
        example_server.wait_for(lambda: "2" in seen)
        add_tagged(e2e_ferry, tmp_path, "m/2", "2b")
        example_server.wait_for(lambda: "2b" in seen)
        e2e_ferry("model", "remove", "--endpoint", "m/2")
        seen.discard("1")
        example_server.wait_for(lambda: "1" in seen)
        add_tagged(e2e_ferry, tmp_path, "m", "plain")
        example_server.wait_for(lambda: "plain" in seen)  # an unversioned endpoint takes /serve/m over
        e2e_ferry("model", "remove", "--endpoint", "m/1")
        head = e2e_ferry("history", "--json").json()[-1]["revision"]
        example_server.wait_for(lambda: example_server.client.get("/health/ready").json().get("revision") == head,
                                what="the removal of m/1 live")  # fmt: skip
        after = answered[0]
        example_server.wait_for(lambda: answered[0] >= after + 200, what="200 more requests after the removal")
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == [], failures[:5]


def test_errors_over_http(e2e_ferry: Ferry, example_server: Server, tmp_path: Path):
    raising = code(tmp_path, "raising", """
        class Preprocess:
            def preprocess(self, body, state, collect=None):
                return body["x"]
            def process(self, data, state, collect=None):
                return data
        """)  # fmt: skip
    add_tagged(e2e_ferry, tmp_path, "good", "g")
    add(e2e_ferry, "--engine", "custom", "--endpoint", "raising", "--preprocess", raising)
    add(e2e_ferry, "--engine", "custom", "--endpoint", "broken", "--preprocess",
        code(tmp_path, "broken", "import no_such_module_here\n"))  # fmt: skip
    example_server.wait_for(lambda: example_server.post("/serve/good", {}).status_code == 200)
    # added last: the newest revision, with `raising` in it (`good` may answer from an earlier one)
    example_server.wait_for(lambda: example_server.serve("broken", {}).status_code != 404)
    r = example_server.post("/serve/raising", {"y": 1})
    assert r.status_code == 422 and "endpoint raising: preprocess raised KeyError: 'x'" in r.json()["error"]
    r = example_server.post("/serve/broken", {})
    assert r.status_code == 503 and "no_such_module_here" in r.json()["error"] and "retry-after" in r.headers
    r = example_server.post("/serve/ghost", {})
    assert r.status_code == 404 and "broken" not in r.json()["error"] and "good" in r.json()["error"]
    r = example_server.client.post("/serve/good", content=b"x" * (65 << 20))
    assert r.status_code == 413
    status = e2e_ferry("status", "--json").json()
    (inst,) = status["instances"]
    assert inst["state"]["endpoints"]["broken"]["state"] == "failed"
    assert "no_such_module_here" in inst["state"]["endpoints"]["broken"]["error"]
    assert inst["state"]["endpoints"]["good"]["state"] == "ready"
    assert "broken" in e2e_ferry("status").out  # the human view shows it too
    assert example_server.client.get("/health/live").status_code == 200


def test_engine_crash_is_500_and_process_survives(e2e_ferry: Ferry, example_server: Server, tmp_path: Path):
    crash = code(tmp_path, "crash", """
        class Preprocess:
            def process(self, data, state, collect=None):
                raise MemoryError("out of memory in the model")
        """)  # fmt: skip
    add(e2e_ferry, "--engine", "custom", "--endpoint", "c", "--preprocess", crash)
    add_tagged(e2e_ferry, tmp_path, "ok", "ok")
    example_server.wait_for(lambda: example_server.post("/serve/ok", {}).status_code == 200)
    r = example_server.post("/serve/c", {})
    assert r.status_code == 422 and "MemoryError" in r.json()["error"]
    assert example_server.post("/serve/ok", {}).json() == {"tag": "ok"}


def test_two_workers_both_serve_and_age_out(ferry_sqlite: Ferry, tmp_path: Path):
    ferry_sqlite.service()
    server = Server(tmp_path, "--workers", "2")
    try:
        server.wait_ready()
        add_tagged(ferry_sqlite, tmp_path, "w", "w")
        server.wait_for(lambda: server.post("/serve/w", {}).status_code == 200)
        server.wait_for(lambda: len(ferry_sqlite("status", "--json").json()["instances"]) == 2, what="2 instances")
        head = ferry_sqlite("history", "--json").json()[-1]["revision"]
        server.wait_for(
            lambda: {i["revision"] for i in ferry_sqlite("status", "--json").json()["instances"]} == {head},
            what="both workers on the head revision",
        )
        for _ in range(20):  # whichever worker answers, it answers the same
            assert server.post("/serve/w", {}).json() == {"tag": "w"}
    finally:
        server.stop(sig=9)  # a crash: no chance to deregister
    deadline = time.monotonic() + 10
    while ferry_sqlite("status", "--json").json()["instances"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ferry_sqlite("status", "--json").json()["instances"] == []


def test_by_default_one_worker_per_core_serves(ferry_sqlite: Ferry, tmp_path: Path):
    """`ferry serve` with no worker setting (the suite pins FERRY_WORKERS=1; auto is the default) starts one
    worker per usable core, says why, and each reports as an instance."""
    ferry_sqlite.service()
    add_tagged(ferry_sqlite, tmp_path, "w", "w")
    cores = usable_cores()
    server = Server(tmp_path, env={"FERRY_WORKERS": "auto"})
    try:
        server.wait_ready()
        assert server.post("/serve/w", {}).json() == {"tag": "w"}
        expected = min(cores, AUTO_MAX)
        assert f"with {expected} worker(s) (auto: one per core, {cores} usable" in server.log(), server.log()
        server.wait_for(
            lambda: len(ferry_sqlite("status", "--json").json()["instances"]) == expected, what=f"{expected} instances"
        )
    finally:
        server.stop()


def test_live_changes_on_every_store(ferry: Ferry, tmp_path: Path):
    """The same serve loop on SQLite and on a real PostgreSQL server: add, replace, remove, heartbeat."""
    ferry.service()
    server = Server(tmp_path, env=FAST_POLL)
    try:
        server.wait_ready()
        add_tagged(ferry, tmp_path, "live", "one")
        assert server.wait_endpoint("live") == {"tag": "one"}
        add_tagged(ferry, tmp_path, "live", "two")
        server.wait_for(lambda: server.serve("live").json() == {"tag": "two"}, what="replaced code answering")
        ferry("model", "remove", "--endpoint", "live")
        server.wait_for(lambda: server.serve("live").status_code == 404, what="removed endpoint gone")
        head = ferry("history", "--json").json()[-1]["revision"]
        server.wait_for(
            lambda: [i["revision"] for i in ferry("status", "--json").json()["instances"]] == [head],
            what="the instance reporting the head revision",
        )
    finally:
        server.stop()
