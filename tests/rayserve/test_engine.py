"""RayEngine's model call: a request whose model replica died under it is sent again, and says so."""

from __future__ import annotations

import asyncio
import logging

import pytest

pytest.importorskip("ray", reason="needs pip install 'ferry[ray]'")
from ray.exceptions import RayActorError  # noqa: E402

from ferry.errors import NotReady  # noqa: E402
from ferry.rayserve.engine import RETRIES, RayEngine  # noqa: E402


class Method:
    """A deployment handle's method whose first ``losses`` calls find their replica dead."""

    def __init__(self, losses: int) -> None:
        self.losses, self.calls = losses, 0

    def remote(self, *args):
        self.calls += 1
        lost = self.calls <= self.losses

        async def answer():
            if lost:
                raise RayActorError()
            return args

        return answer()


def engine() -> RayEngine:
    found = RayEngine.__new__(RayEngine)  # no cluster: only the call path is under test
    found.endpoint_key, found.app, found.waiting = "slow", "ferry-x-slow-1", 0
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
