"""RayEngine's model call: a request whose model replica died under it is sent again, and says so; no call
waits past the endpoint's request timeout (503 to retry when a replica was lost on the way, else 504)."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("ray", reason="needs pip install 'ferry[ray]'")
from ray.exceptions import RayActorError  # noqa: E402

from ferry.errors import NotReady, Timeout  # noqa: E402
from ferry.rayserve.engine import RETRIES, RayEngine, RayReconciler, RaySwap  # noqa: E402
from ferry.serving.revisions.reconciler import Reconciler  # noqa: E402
from ferry.serving.revisions.swap import RevisionSwap  # noqa: E402


class Method:
    """A deployment handle's method whose first ``losses`` calls find their replica dead; calls after those never
    answer when ``hang`` (a retry held for a replica that does not come)."""

    def __init__(self, losses: int, hang: bool = False) -> None:
        self.losses, self.hang, self.calls, self.cancelled = losses, hang, 0, 0

    def remote(self, *args):
        self.calls += 1
        lost = self.calls <= self.losses
        method = self

        class Response:
            def __await__(self):
                return answer().__await__()

            def cancel(self):
                method.cancelled += 1

        async def answer():
            if lost:
                raise RayActorError()
            if self.hang:
                await asyncio.sleep(3600)
            return args

        return Response()


def engine(timeout_s: float | None = 30.0, app: str = "ferry-x-slow-1") -> RayEngine:
    found = RayEngine.__new__(RayEngine)  # no cluster: only the call path is under test
    found.endpoint_key, found.app, found.waiting, found.timeout_s = "slow", app, 0, timeout_s
    return found


def test_a_call_whose_replica_died_is_sent_again_and_warned(caplog: pytest.LogCaptureFixture):
    ray_engine, method = engine(), Method(losses=2)
    with caplog.at_level(logging.WARNING, logger="ferry.rayserve.engine"):
        assert asyncio.run(ray_engine._call(method, "row")) == ("row",)
    assert method.calls == 3 and ray_engine.waiting == 0
    lost = [r.getMessage() for r in caplog.records if "a model replica was lost" in r.getMessage()]
    assert len(lost) == 2 and all(m.startswith("endpoint slow: ") for m in lost), caplog.text


def test_a_call_lost_every_time_is_a_503_to_retry():
    ray_engine, method = engine(), Method(losses=RETRIES + 1)
    with pytest.raises(NotReady) as refused:
        asyncio.run(ray_engine._call(method, "row"))
    assert method.calls == RETRIES + 1 and ray_engine.waiting == 0
    assert refused.value.status_code == 503 and "endpoint slow" in str(refused.value)


def test_a_retry_that_finds_no_replica_in_time_is_a_503_within_the_request_timeout():
    ray_engine, method = engine(timeout_s=0.5), Method(losses=1, hang=True)
    started = time.monotonic()
    with pytest.raises(NotReady) as refused:
        asyncio.run(ray_engine._call(method, "row"))
    assert 0.5 <= time.monotonic() - started < 2.0
    assert refused.value.status_code == 503 and refused.value.retry_after > 0
    assert "died" in str(refused.value) and method.cancelled == 1 and ray_engine.waiting == 0


def test_a_call_with_no_answer_is_a_504_within_the_request_timeout():
    ray_engine, method = engine(timeout_s=0.3), Method(losses=0, hang=True)
    started = time.monotonic()
    with pytest.raises(Timeout) as late:
        asyncio.run(ray_engine._call(method, "row"))
    assert 0.3 <= time.monotonic() - started < 2.0
    assert late.value.status_code == 504 and method.calls == 1 and method.cancelled == 1


def test_the_application_of_a_replaced_version_stays_reported_while_its_requests_drain(monkeypatch):
    """The launcher deletes a model application once no ingress reports it: one a replaced version's requests
    still use (they drain inside ``apply``) stays reported until ``apply`` returns."""
    plane = SimpleNamespace(table=SimpleNamespace(runtimes={"m": SimpleNamespace(engine=engine(app="old"))}))
    reconciler = RayReconciler.__new__(RayReconciler)  # no cluster, no store: only what the heartbeat reports
    reconciler.report, reconciler.swap = {}, RaySwap(plane, None, None, None, "service")
    monkeypatch.setattr(Reconciler, "state", lambda self: {})
    reported = []

    def swap_then_drain(self, number):
        self.plane.table = SimpleNamespace(runtimes={"m": SimpleNamespace(engine=engine(app="new"))})
        reported.append(reconciler.state()["ray_apps"])  # the old version's requests drain now

    monkeypatch.setattr(RevisionSwap, "apply", swap_then_drain)
    reconciler.swap.apply(2)
    assert reported == [["new", "old"]]
    assert reconciler.state()["ray_apps"] == ["new"]
