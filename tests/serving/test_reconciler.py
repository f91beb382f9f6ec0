"""The reconciler keeps going: a store missing at start, a long load(), builds that fail again and again."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import create_engine

from ferry.control.spec import TensorSpec
from ferry.control.store import Store
from ferry.rest.app import FerryApp
from ferry.serving.revisions.reconciler import Backoff, Reconciler
from tests.serving.conftest import Service


class Running:
    """``reconciler.run()`` on its own event loop in a thread, as `ferry serve` runs it beside the server."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(reconciler.run(),), daemon=True)
        self.thread.start()

    def wait_for(self, check: Callable[[], object], timeout: float = 20, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert self.thread.is_alive(), "the reconciler stopped"
            assert time.monotonic() < deadline, (
                f"{what} not reached in {timeout} s; log: {list(self.reconciler.recent.lines)[-3:]}"
            )
            time.sleep(0.02)

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.reconciler.stop)
            self.thread.join(30)
            self.loop.close()


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(service: Service, store: Store | None = None, **kw) -> Running:
        kw = {"poll_interval": 0.02, "heartbeat_interval": 0.2, **kw}
        rec = Reconciler(service.plane, store or service.store, service.registry, service.artifacts, service.id, **kw)
        started.append(Running(rec))
        return started[-1]

    yield start
    for run in started:
        run.stop()


def echo(service: Service) -> Path:
    return service.code(
        """
        class Preprocess:
            def process(self, data, state, collect=None):
                return {"echo": data}
        """
    )


def test_store_unreachable_at_start_is_retried_then_serves(service: Service, running, tmp_path: Path):
    """/health/ready says why while the store cannot be opened; serving starts once it can, no restart."""
    service.add("e", code=echo(service))
    later = tmp_path / "not-there-yet"  # SQLite cannot open a file in a folder that does not exist
    store = Store(create_engine(f"sqlite:///{later / 'ferry.db'}"))
    run = running(service, store, connect_retry=Backoff(0.05, 0.2))
    app = FerryApp(service.plane, run.reconciler)

    def ready() -> httpx.Response:
        async def get() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ferry") as client:
                return await client.get("/health/ready")

        return asyncio.run(get())

    run.wait_for(lambda: sum("store unreachable" in line for line in run.reconciler.recent.lines) >= 3)
    answer = ready()
    assert answer.status_code == 503
    assert answer.json()["status"] == "unavailable"
    assert (
        answer.json()["reason"].startswith("store unreachable: ")
        and "unable to open database" in answer.json()["reason"]
    )
    later.symlink_to(service.root, target_is_directory=True)  # the store comes up
    run.wait_for(service.plane.ready, what="ready")
    assert ready().json() == {"status": "ready", "revision": service.store.head(service.id)}
    assert asyncio.run(service.plane.infer("e", None, {"a": 1})) == {"echo": {"a": 1}}
    run.wait_for(lambda: instance_state(service).get("e", {}).get("state") == "ready", what="heartbeat")
    store.sql.dispose()


def instance_state(service: Service) -> dict:
    """The endpoints of this service's one live instance, as `ferry status` reads them."""
    found = service.store.list_instances(service.id)
    return found[0].state.get("endpoints", {}) if found else {}


def test_heartbeats_keep_their_schedule_during_a_long_load(service: Service, running):
    """A 3 s load() (in-process; the e2e test runs `ferry status` against a real server) never silences the instance."""
    service.add("slow", model_id=service.model(), code=service.code(
        """
        import time
        class Preprocess:
            def load(self, path):
                time.sleep(3.0)
            def process(self, data, state, collect=None):
                return "done"
        """
    ))  # fmt: skip
    run = running(service, heartbeat_interval=0.5)  # live for 2.5 s: a busy xdist worker's pauses fit
    beats: list[tuple[float, str]] = []
    seen_live: list[bool] = []  # what `ferry status` would have said at each look during the load

    def sample() -> bool:
        (inst,) = service.store.list_instances(service.id, alive_within=3600) or [None]
        if inst is not None:
            state = inst.state.get("endpoints", {}).get("slow", {}).get("state", "-")
            if not beats or beats[-1][0] != inst.heartbeat_at:
                beats.append((inst.heartbeat_at, state))
            if state == "loading":
                seen_live.append(bool(service.store.list_instances(service.id)))
        return service.plane.ready()

    run.wait_for(sample, timeout=30, what="the slow endpoint loaded")
    loading = [at for at, state in beats if state == "loading"]
    gaps = [b - a for a, b in zip(loading, loading[1:], strict=False)]
    assert len(loading) >= 4, beats  # about 3 s / 0.5 s
    assert max(gaps) < 1.0, gaps  # on schedule: a load that held the beats back would leave a 3 s gap
    assert seen_live and all(seen_live), f"the instance must stay live while it loads: {seen_live}"


def tiny_onnx(path: Path) -> Path:
    """y = 2 * x on float x[batch, 2]."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double", [x], [y], initializer=[two])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


HOLDS_A_THREAD = """
    import threading
    import numpy as np

    class Preprocess:
        # load() starts a worker holding 4 MB; only unload() stops it: what a build that fails must call.
        def load(self, path):
            self.stop = threading.Event()
            self.ballast = b"x" * (4 << 20)
            self.worker = threading.Thread(target=self._work, daemon=True)
            self.worker.start()
            with open({calls!r}, "a") as f:
                f.write("load\\n")

        def _work(self):
            self.stop.wait()

        def unload(self):
            self.stop.set()
            self.worker.join()
            with open({calls!r}, "a") as f:
                f.write("unload\\n")

        def preprocess(self, body, state, collect=None):
            return {{"x": np.asarray([body], dtype=np.float32)}}

        def postprocess(self, data, state, collect=None):
            raise RuntimeError("warmup answer rejected")
"""


def measure() -> tuple[int, int, int]:
    """Threads (Python's, the OS's) and RSS, after handing the allocator's free memory back to the OS.

    The fewest threads seen over a second: a build in progress holds its threads for a moment, which is
    not a leak (a leak holds them in every sample).
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc keeps freed arenas; RSS would count them
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    me = psutil.Process()
    samples = []
    for _ in range(10):
        samples.append((threading.active_count(), me.num_threads()))
        time.sleep(0.1)
    return min(s[0] for s in samples), min(s[1] for s in samples), me.memory_info().rss


@pytest.mark.parametrize("failure", ["corrupt model file", "warmup fails after batching"])
def test_twenty_failed_retries_leave_threads_and_rss_flat(service: Service, running, tmp_path: Path, failure: str):
    """Each failed build calls unload and releases engine and batcher, so retries leak nothing."""
    calls = tmp_path / "calls.txt"
    calls.touch()
    if failure == "corrupt model file":
        (tmp_path / "corrupt.onnx").write_bytes(b"not an onnx model" * 1000)
        model, aux = tmp_path / "corrupt.onnx", {}
    else:
        model, aux = tiny_onnx(tmp_path / "double.onnx"), {"max_batch_size": 4, "warmup": [1.0, 2.0]}
    service.add(
        "leaky",
        "onnxruntime",
        model_id=service.registry.upload("m", path=model).id,
        code=service.code(HOLDS_A_THREAD.format(calls=str(calls))),
        inputs=(TensorSpec(name="x", dtype="float32", shape=(-1, 2)),),
        aux_config=aux,
    )
    run = running(service, retry=Backoff(0.0, 0.0))

    def builds() -> int:
        return calls.read_text().split().count("load")

    run.wait_for(lambda: builds() >= 3, what="three failed builds")
    before = measure()
    run.wait_for(lambda: builds() >= 23, timeout=120, what="twenty more failed builds")
    after = measure()
    run.stop()
    assert "leaky" in service.plane.table.failed
    assert after[0] <= before[0] + 2 and after[1] <= before[1] + 2, f"threads (python, os, rss): {before} -> {after}"
    assert after[2] - before[2] < 30 << 20, f"RSS grew {(after[2] - before[2]) >> 20} MB over 20 failed builds"
    lines = calls.read_text().split()
    assert lines.count("load") == lines.count("unload") >= 23, lines  # every load() was matched by an unload()
