"""`ferry status` against a real `ferry serve`: counts at most one heartbeat old, errors and their log lines."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import Ferry
from tests.server import Server

pytestmark = pytest.mark.e2e

HEARTBEAT_S = 0.5
MARGIN_S = 0.5
"""The heartbeat's own time: a thread, a psutil read and one SQLite write, on a busy machine."""

ECHO = """
class Preprocess:
    def process(self, data, state, collect=None):
        if data.get("fail"):  # a call to an endpoint that does not exist: a warning, then a failed request
            raise RuntimeError(f"ghost answered {self.send_request(endpoint='ghost', data=data)}")
        return {"echo": data["x"]}
"""


@pytest.fixture
def beating(ferry_sqlite: Ferry, tmp_path: Path) -> Iterator[Server]:
    """A new service and one `ferry serve` for it that heartbeats every HEARTBEAT_S."""
    ferry_sqlite.service()
    srv = Server(tmp_path, env={"FERRY_HEARTBEAT_INTERVAL": str(HEARTBEAT_S)})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def endpoint(ferry: Ferry, name: str) -> dict:
    (inst,) = ferry("status", "--json").json()["instances"]
    return inst["state"]["endpoints"][name]


def within_a_heartbeat(server: Server, ferry: Ferry, counts: dict) -> None:
    """`ferry status` shows ``counts`` for `echo` within a heartbeat (and the margin) of the last request: polled
    rather than read once after that time, so the test waits only as long as the server takes."""

    def shown() -> bool:
        state = endpoint(ferry, "echo")
        return {key: state.get(key) for key in counts} == counts  # beside them: the rates (requests_per_s, ...)

    server.wait_for(shown, HEARTBEAT_S + MARGIN_S, f"echo's counts {counts}")


def test_status_counts_are_one_heartbeat_old(ferry_sqlite: Ferry, beating: Server, tmp_path: Path):
    """Four answered requests show as 4 one heartbeat later; a failed one as an error, with its warning."""
    code = tmp_path / "echo.py"
    code.write_text(textwrap.dedent(ECHO))
    ferry_sqlite("model", "add", "--engine", "custom", "--endpoint", "echo", "--preprocess", str(code))
    assert beating.wait_endpoint("echo", {"x": 0}) == {"echo": 0}  # the first answered request
    for x in (1, 2, 3):
        assert beating.serve("echo", {"x": x}).json() == {"echo": x}
    within_a_heartbeat(beating, ferry_sqlite, {"state": "ready", "requests": 4, "errors": 0, "inflight": 0})

    failed = beating.serve("echo", {"x": 4, "fail": True})
    assert failed.status_code == 422 and "ghost answered None" in failed.json()["error"]
    within_a_heartbeat(beating, ferry_sqlite, {"state": "ready", "requests": 5, "errors": 1, "inflight": 0})
    doc = ferry_sqlite("status", "--json").json()
    (inst,) = doc["instances"]
    echo = inst["state"]["endpoints"]["echo"]
    assert {k: echo[k] for k in ("state", "requests", "errors", "inflight")} == {"state": "ready", "requests": 5,
                                                                               "errors": 1, "inflight": 0}  # fmt: skip
    warnings = [line for line in inst["state"]["log"] if " WARNING send_request to ghost failed: " in line]
    assert len(warnings) == 1 and "served endpoints: echo" in warnings[0]
    assert any(" INFO revision 2 live: 1 endpoint(s), 0 failed" in line for line in inst["state"]["log"])
    assert 0 <= inst["uptime_s"] < 120 and abs(inst["started_at"] - beating_started(beating)) < 2

    out = ferry_sqlite("status").out
    assert f"{inst['up_since']} (" in out and " ago)" in out  # a UTC time and the age
    assert "WARNING send_request to ghost failed" in out  # the recent warning, in the table too


def beating_started(server: Server) -> float:
    """When the `ferry serve` process started, as the OS tells it."""
    return psutil.Process(server.proc.pid).create_time()
