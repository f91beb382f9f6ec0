"""The request path under load, over real HTTP to a real `ferry serve`: where code runs, send_request,
the live swap, overload and timeouts."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import joblib
import numpy as np
import orjson
import pytest
from sklearn.linear_model import LogisticRegression

from ferry.cli.context import Context
from tests.conftest import Ferry
from tests.e2e import one_server
from tests.load import hammer, probe
from tests.server import Server

pytestmark = pytest.mark.e2e
ferry_sqlite, server = one_server.ferry_sqlite, one_server.server  # one store and one `ferry serve` here


def write(folder: Path, name: str, source: str) -> str:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


@pytest.fixture(scope="module")
def model_id(e2e_ferry: Ferry, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("logreg")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    joblib.dump(LogisticRegression().fit(x, (x.sum(axis=1) > 0).astype(int)), folder / "m.pkl")
    out = e2e_ferry("model", "upload", "--name", "logreg", "--project", "e2e", "--path", str(folder / "m.pkl"))
    return out.out.strip().rsplit("=", 1)[1]


ROWS = """
    import time

    class Preprocess:
        def preprocess(self, body, state, collect=None):
            if body.get("sleep"):
                time.sleep(body["sleep"])
            return [[body["x0"], body["x1"]]]

        def postprocess(self, data, state, collect=None):
            return {"y": data.tolist()}
"""


SLEEPERS = """
    import threading
    import time

    class Preprocess:
        lock, now, peak = threading.Lock(), 0, 0

        def preprocess(self, body, state, collect=None):
            cls = type(self)
            with cls.lock:
                cls.now += 1
                cls.peak = max(cls.peak, cls.now)
            try:
                time.sleep(body["sleep"])
            finally:
                with cls.lock:
                    cls.now -= 1
            return [[body["x0"], body["x1"]]]

        def postprocess(self, data, state, collect=None):
            return {"y": data.tolist(), "peak": type(self).peak}
"""
"""A preprocess that sleeps and answers how many of its calls have slept at once so far."""


def test_blocking_preprocess_runs_off_the_loop(ferry_sqlite: Ferry, server: Server, model_id: str, tmp_path: Path):
    """16 callers of a preprocess that sleeps 20 ms: the sleeps overlap (at least 12 at once) and
    /health/live answers meanwhile. On the event loop they would take turns, each probe behind the queue."""
    ferry_sqlite("model", "add", "--engine", "sklearn", "--endpoint", "slow", "--model-id", model_id,
                 "--preprocess", write(tmp_path, "sleepers", SLEEPERS))  # fmt: skip
    server.wait_endpoint("slow", {"x0": 1, "x1": 1, "sleep": 0})
    body = orjson.dumps({"x0": 1, "x1": 2, "sleep": 0.02})

    async def go():
        stop = asyncio.Event()
        health = asyncio.create_task(probe(server.port, "/health/live", stop))
        tally = await hammer(server.port, "/serve/slow", body, connections=16, seconds=2)  # ~40 probes
        stop.set()
        return tally, await health

    tally, health = asyncio.run(go())
    worst, peak = max(a.seconds for a in health), max(a.json()["peak"] for a in tally.answers)
    print(f"sleeping preprocess: {tally.rate:.0f} req/s over 16 connections, {peak} asleep at once; "
          f"/health/live worst {worst * 1000:.1f} ms")  # fmt: skip
    assert tally.statuses() == {200: len(tally.answers)}
    assert all(a.json()["y"] == [1] for a in tally.answers)
    assert peak >= 12
    assert worst < 0.2  # 16 sleeps of 20 ms taking turns on the loop would hold a probe up to 320 ms


TARGETS = {
    "batched": {"x0": 2, "x1": 1},
    "async_target": {"v": 5},
    "custom_target": {"v": 7},
    "chain_a": {"v": 1},
}
EXPECTED = {"batched": {"y": [1]}, "async_target": {"async": 5}, "custom_target": {"custom": 7}, "chain_a": {"c": 4}}


def _callers(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Endpoints whose hooks call every target: endpoint -> (engine, preprocess file)."""
    calls = textwrap.dedent(f"""
        TARGETS = {TARGETS!r}

        def call_all(send):
            return {{name: send(endpoint="/" + name + "/", data=body) for name, body in TARGETS.items()}}
    """)
    sync_pre = calls + textwrap.dedent("""
    class Preprocess:
        def preprocess(self, body, state, collect=None):
            return call_all(self.send_request)
        def process(self, data, state, collect=None):
            return data
    """)
    sync_process = calls + textwrap.dedent("""
    class Preprocess:
        def process(self, data, state, collect=None):
            return call_all(self.send_request)
    """)
    sync_post = calls + textwrap.dedent("""
    class Preprocess:
        def process(self, data, state, collect=None):
            return data
        def postprocess(self, data, state, collect=None):
            return call_all(self.send_request)
    """)
    async_process = f"""
    import asyncio
    TARGETS = {TARGETS!r}

    class Preprocess:
        async def process(self, data, state, collect=None):
            names = list(TARGETS)
            answers = await asyncio.gather(*(self.send_request(endpoint=n, data=TARGETS[n]) for n in names))
            return dict(zip(names, answers))
    """
    return {
        "from_preprocess": ("custom", write(tmp_path, "c1", sync_pre)),
        "from_process": ("custom", write(tmp_path, "c2", sync_process)),
        "from_postprocess": ("custom", write(tmp_path, "c3", sync_post)),
        "from_async": ("custom_async", write(tmp_path, "c4", async_process)),
    }


def _targets(ferry: Ferry, tmp_path: Path, model_id: str) -> None:
    ferry("model", "add", "--engine", "sklearn", "--endpoint", "batched", "--model-id", model_id,
          "--preprocess", write(tmp_path, "rows", ROWS), "--aux-config", "max_batch_size=8")  # fmt: skip
    ferry("model", "add", "--engine", "custom_async", "--endpoint", "async_target",
          "--preprocess", write(tmp_path, "t1", """
        import asyncio
        class Preprocess:
            async def process(self, data, state, collect=None):
                await asyncio.sleep(0.001)
                return {"async": data["v"]}
    """))  # fmt: skip
    ferry("model", "add", "--engine", "custom", "--endpoint", "custom_target", "--preprocess", write(tmp_path, "t2", """
        class Preprocess:
            def process(self, data, state, collect=None):
                return {"custom": data["v"]}
    """))  # fmt: skip
    for name, following in (("chain_a", "chain_b"), ("chain_b", "chain_c")):
        ferry("model", "add", "--engine", "custom", "--endpoint", name, "--preprocess", write(tmp_path, name, f"""
            class Preprocess:
                def process(self, data, state, collect=None):
                    return self.send_request(endpoint="{following}", data={{"v": data["v"] + 1}})
        """))  # fmt: skip
    ferry("model", "add", "--engine", "custom", "--endpoint", "chain_c", "--preprocess", write(tmp_path, "chain_c", """
        class Preprocess:
            def process(self, data, state, collect=None):
                return {"c": data["v"] + 1}
    """))  # fmt: skip


def test_send_request_from_every_hook_to_every_endpoint(
    ferry_sqlite: Ferry, server: Server, model_id: str, tmp_path: Path
):
    """200 calls per calling hook over 16 connections; every nested call to every kind of target answered."""
    _targets(ferry_sqlite, tmp_path, model_id)
    callers = _callers(tmp_path)
    for endpoint, (engine, path) in callers.items():
        ferry_sqlite("model", "add", "--engine", engine, "--endpoint", endpoint, "--preprocess", path)
    for endpoint in callers:
        server.wait_endpoint(endpoint, {})
    for endpoint in callers:
        tally = asyncio.run(hammer(server.port, f"/serve/{endpoint}", b"{}", connections=16, count=200))
        assert len(tally.answers) == 200
        bad = [a for a in tally.answers if a.status != 200 or a.json() != EXPECTED]
        print(f"{endpoint}: {len(tally.answers)} calls, {tally.rate:.0f} req/s, {len(bad)} wrong")
        assert not bad, (endpoint, bad[0].status, bad[0].body)


def test_fifty_swaps_under_load_answer_every_request(
    ferry_sqlite: Ferry, server: Server, model_id: str, tmp_path: Path
):
    """A batched endpoint replaced 50 times while 16 connections keep asking: every answer 200 and right."""
    rows = Path(write(tmp_path, "rows", ROWS))
    ctx = Context()
    service = ctx.service.id

    def swap(n: int) -> None:
        aux = {"max_batch_size": 8, "max_queue_delay_ms": 1 + n % 3, "pad_value": n}
        ctx.control.add_endpoint(service, engine="sklearn", endpoint="swapped", model_id=model_id,
                                 preprocess=rows, aux_config=aux)  # fmt: skip

    swap(0)
    server.wait_endpoint("swapped", {"x0": 1, "x1": 1})

    async def go():
        stop = asyncio.Event()
        load = asyncio.create_task(
            hammer(server.port, "/serve/swapped", orjson.dumps({"x0": -1, "x1": -2}), connections=16, until=stop)
        )
        for n in range(1, 51):
            await asyncio.to_thread(swap, n)
            head = ctx.store.head(service)
            while server.client.get("/health/ready").json().get("revision") != head:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        stop.set()
        return await load

    tally = asyncio.run(go())
    bad = [a for a in tally.answers if a.status != 200 or a.json() != {"y": [0]}]
    print(f"50 swaps: {len(tally.answers)} requests, statuses {tally.statuses()}")
    assert len(tally.answers) > 500
    assert not bad, (bad[0].status, bad[0].body)
    assert "still running after" not in server.log()


def test_overload_is_a_503_and_a_slow_request_a_504(ferry_sqlite: Ferry, server: Server, model_id: str, tmp_path: Path):
    rows = write(tmp_path, "rows", ROWS)
    ferry_sqlite("model", "add", "--engine", "sklearn", "--endpoint", "small", "--model-id", model_id,
                 "--preprocess", rows, "--aux-config", "max_queue_size=4")  # fmt: skip
    ferry_sqlite("model", "add", "--engine", "sklearn", "--endpoint", "hurried", "--model-id", model_id,
                 "--preprocess", rows, "--aux-config", "request_timeout_ms=200")  # fmt: skip
    server.wait_endpoint("small", {"x0": 1, "x1": 1})
    server.wait_endpoint("hurried", {"x0": 1, "x1": 1})

    body = orjson.dumps({"x0": 1, "x1": 2, "sleep": 0.1})
    tally = asyncio.run(hammer(server.port, "/serve/small", body, connections=16, count=64))
    statuses = tally.statuses()
    print(f"max_queue_size=4 under 16 connections: {statuses}")
    assert set(statuses) == {200, 503} and statuses[200] >= 4
    refused = next(a for a in tally.answers if a.status == 503)
    assert refused.headers["retry-after"] == "1" and "max_queue_size" in refused.json()["error"]

    late = server.serve("hurried", {"x0": 1, "x1": 2, "sleep": 1.0})
    assert late.status_code == 504 and "request_timeout_ms" in late.json()["error"]
    assert server.serve("hurried", {"x0": 1, "x1": 2}).json() == {"y": [1]}
