"""Shadow traffic over real HTTP to a real `ferry serve`: the live p99 with a slow or failing shadow, and the
shadow's counts in `ferry status --json`."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import orjson
import pytest

from ferry.cli.context import Context
from tests.conftest import Ferry
from tests.e2e import one_server
from tests.load import Tally, hammer
from tests.server import Server

pytestmark = pytest.mark.e2e

ferry_sqlite, server = one_server.ferry_sqlite, one_server.server  # one store and one `ferry serve` here
MEASURE_S = 2.0
"""Each load phase: 1,000s of requests for the p99, and two rounds of the 1 s shadows (MAX_INFLIGHT 8 at once)."""

LIVE = """
    class Preprocess:
        def process(self, body, state, collect=None):
            return {"y": body["x0"] + body["x1"]}
"""
SLEEPY = """
    import time

    class Preprocess:
        def process(self, body, state, collect=None):
            time.sleep(1.0)
            return {"y": body["x0"] + body["x1"]}
"""
BROKEN = """
    class Preprocess:
        def process(self, body, state, collect=None):
            raise RuntimeError("the shadow is broken")
"""


def add(ferry: Ferry, folder: Path, endpoint: str, source: str) -> None:
    path = folder / f"{endpoint}.py"
    path.write_text(textwrap.dedent(source))
    ferry("model", "add", "--engine", "custom", "--endpoint", endpoint, "--preprocess", str(path))


def p99(tally: Tally) -> float:
    times = sorted(a.seconds for a in tally.answers)
    return times[int(0.99 * len(times))]


def measure(server: Server, seconds: float = MEASURE_S) -> Tally:
    body = orjson.dumps({"x0": 1, "x1": 2})
    tally = asyncio.run(hammer(server.port, "/serve/live", body, connections=8, seconds=seconds))
    assert tally.statuses() == {200: len(tally.answers)}
    assert all(a.json() == {"y": 3} for a in tally.answers)
    return tally


def shadow_counts(server: Server, target: str | None, endpoint: str = "live") -> dict | None:
    """The instance's heartbeat counts for the shadow of ``endpoint``, once the server serves that shadow."""
    ctx = Context()
    found: list[dict | None] = []

    def served() -> bool:
        instances = ctx.store.list_instances(ctx.service.id)
        found.append(instances[0].state.get("shadows", {}).get(endpoint) if instances else None)
        return (found[-1] or {}).get("target") == target

    server.wait_for(served, 20, f"the shadow of {endpoint} to be {target}")
    return found[-1]


def status_counts(ferry: Ferry, endpoint: str = "live") -> dict:
    """What a user sees: `ferry status --json`'s counts for the shadow of ``endpoint``."""
    return json.loads(ferry("status", "--json").out)["instances"][0]["state"]["shadows"][endpoint]


def test_a_slow_or_failing_shadow_adds_nothing_to_the_live_p99(ferry_sqlite: Ferry, server: Server, tmp_path: Path):
    for endpoint, source in (("live", LIVE), ("twin", LIVE), ("sleepy", SLEEPY), ("broken", BROKEN)):
        add(ferry_sqlite, tmp_path, endpoint, source)
    server.wait_endpoint("live", {"x0": 1, "x1": 2})
    server.wait_endpoint("twin", {"x0": 1, "x1": 2})
    before = measure(server)

    ferry_sqlite("model", "shadow", "--endpoint", "live", "--target", "sleepy", "--fraction", "0.5")
    shadow_counts(server, "sleepy")
    sleepy = measure(server)
    slow = status_counts(ferry_sqlite)

    ferry_sqlite("model", "shadow", "--endpoint", "live", "--target", "broken", "--fraction", "0.5")
    shadow_counts(server, "broken")
    broken = measure(server)
    server.wait_for(lambda: shadow_counts(server, "broken")["inflight"] == 0, 10, "the shadows to finish")
    failing = status_counts(ferry_sqlite)

    out = ferry_sqlite("model", "remove", "--endpoint", "live").out
    assert "shadow of live removed" in out
    shadow_counts(server, None)
    after = measure(server)

    base = max(p99(before), p99(after))
    print(
        f"live p99: {p99(before) * 1000:.1f} / {p99(after) * 1000:.1f} ms without a shadow "
        f"({before.rate:.0f} / {after.rate:.0f} req/s), {p99(sleepy) * 1000:.1f} ms with one that sleeps 1 s "
        f"({sleepy.rate:.0f} req/s), {p99(broken) * 1000:.1f} ms with one that fails ({broken.rate:.0f} req/s)\n"
        f"sleepy: {slow}\nbroken: {failing}"
    )
    for tally in (sleepy, broken):  # a live request that waited for a 1 s shadow, or a stalled loop, breaks both
        assert p99(tally) < base + 0.020
        assert p99(tally) < 2 * base + 0.005  # + 5 ms: at 2-5 ms, a shared 2-core machine's noise alone is ~2x
    assert slow["sent"] >= 8 and slow["dropped"] > 0 and slow["errors"] == 0
    assert slow["latency_ms"]["p50"] >= 1000
    assert failing["sent"] > 100 and failing["errors"] == failing["sent"]
    assert failing["answered"] == 0 and "the shadow is broken" in failing["last_error"]


def test_model_shadow_reports_agreement_and_lists_with_endpoints(ferry_sqlite: Ferry, server: Server, tmp_path: Path):
    """Its own endpoints (`agree`, `agree_twin`): the module's server is shared with the p99 test."""
    add(ferry_sqlite, tmp_path, "agree", LIVE)
    add(ferry_sqlite, tmp_path, "agree_twin", LIVE)
    out = ferry_sqlite("model", "shadow", "--endpoint", "agree", "--target", "agree_twin").out
    assert "shadow of agree set: 1 of its requests copied to agree_twin" in out
    listed = json.loads(ferry_sqlite("model", "endpoints", "--json").out)
    assert listed["shadows"]["agree"] == {"endpoint": "agree", "target": "agree_twin", "fraction": 1.0}
    assert "shadows" in ferry_sqlite("model", "endpoints").out
    shadow_counts(server, "agree_twin", "agree")
    for n in range(20):
        assert server.serve("agree", {"x0": n, "x1": 1}).json() == {"y": n + 1}
    server.wait_for(lambda: shadow_counts(server, "agree_twin", "agree")["answered"] == 20, 10, "20 shadow answers")
    counts = status_counts(ferry_sqlite, "agree")
    assert (counts["sent"], counts["errors"], counts["agreement"]) == (20, 0, 1.0)
    shown = ferry_sqlite("status").out
    assert "shadows per instance" in shown and "agree_twin" in shown
    err = ferry_sqlite("model", "shadow", "--endpoint", "agree", "--target", "nope", ok=False).err
    assert "no shadow target 'nope'" in err and "ferry model add" in err
