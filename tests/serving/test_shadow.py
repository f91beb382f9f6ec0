"""Shadow traffic on the data plane, without HTTP: sampling, counting, bounds, and the shadow spec's edits."""

from __future__ import annotations

import asyncio
import time

import pytest

from ferry.control.spec import ServiceConfig
from ferry.errors import InvalidInput, NotFound
from ferry.serving.request import shadow

LIVE = """
    class Preprocess:
        def preprocess(self, body, state, collect=None):
            value = body.pop("v")  # changes the live body in place: the shadow must not see this
            body["seen_by_live"] = True
            return value

        def process(self, data, state, collect=None):
            return {"v": data}
"""

TARGET = """
    import time

    class Preprocess:
        def process(self, body, state, collect=None):
            if "seen_by_live" in body or "v" not in body:
                raise RuntimeError("the shadow got the body the live preprocess changed")
            time.sleep(body.get("sleep", 0))
            if body["v"] % 10 == 0:
                raise ValueError("no multiples of ten")
            return {"v": -1 if body["v"] % 10 == 1 else body["v"]}
"""


@pytest.fixture
def shadowed(service):
    """Endpoints ``live`` and ``target`` (agrees with live but for v % 10 == 1, fails for v % 10 == 0)."""
    service.add("live", code=service.code(LIVE))
    service.add("target", code=service.code(TARGET))
    return service


def shadow_to(service, fraction: float = 1.0, endpoint: str = "live", target: str = "target"):
    service.control.add_shadow(service.id, endpoint=endpoint, target=target, fraction=fraction)
    service.apply()


def stats(service, endpoint: str = "live") -> dict:
    return service.plane.shadows.states(service.plane.table.shadows)[endpoint]


async def settled(service, endpoint: str = "live", timeout: float = 10) -> dict:
    """The shadow's counts once none of its requests is running."""
    deadline = time.monotonic() + timeout
    while stats(service, endpoint)["inflight"] and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return stats(service, endpoint)


def run(service, scenario):
    async def go():
        service.plane.loop = asyncio.get_running_loop()
        return await scenario()

    return asyncio.run(go())


def test_fraction_is_respected(shadowed):
    shadow_to(shadowed, fraction=0.25)

    async def scenario():
        for n in range(2000):
            assert await shadowed.plane.infer("live", None, {"v": 2 + 10 * n}) == {"v": 2 + 10 * n}
            await asyncio.sleep(0)  # the shadow starts on a later loop turn, as behind a socket
        return await settled(shadowed)

    counts = run(shadowed, scenario)
    sampled = counts["sent"] + counts["dropped"]
    print(f"fraction 0.25 of 2000: {counts}")
    assert 500 - 80 <= sampled <= 500 + 80  # 4 standard deviations of Binomial(2000, 0.25)
    assert counts["errors"] == 0 and counts["answered"] == counts["agreed"] == counts["sent"] > 0


def test_errors_latency_and_agreement_are_counted_on_an_unchanged_body(shadowed):
    shadow_to(shadowed)

    async def scenario():
        for n in range(40):
            assert await shadowed.plane.infer("live", None, {"v": n, "sleep": 0.01}) == {"v": n}
            await settled(shadowed)  # one at a time: nothing is dropped
        return stats(shadowed)

    counts = run(shadowed, scenario)
    assert (counts["sent"], counts["dropped"], counts["errors"], counts["answered"]) == (40, 0, 4, 36)
    assert counts["agreed"] == 32 and counts["agreement"] == round(32 / 36, 4)
    assert "no multiples of ten" in counts["last_error"]  # never the changed body's error
    assert 10 <= counts["latency_ms"]["p50"] < 1000
    assert shadowed.reconciler.state()["shadows"]["live"]["sent"] == 40  # what the heartbeat carries


def test_shadows_in_flight_are_bounded_and_the_live_answer_never_waits(shadowed):
    shadow_to(shadowed)
    requests = 3 * shadow.MAX_INFLIGHT

    async def scenario():
        started = time.perf_counter()
        for _ in range(requests):
            assert await shadowed.plane.infer("live", None, {"v": 2, "sleep": 0.5}) == {"v": 2}
            await asyncio.sleep(0)
        live_seconds = time.perf_counter() - started
        during = stats(shadowed)
        return live_seconds, during, await settled(shadowed)

    live_seconds, during, after = run(shadowed, scenario)
    assert live_seconds < 0.4  # the shadows each sleep 0.5 s
    assert during["inflight"] == shadow.MAX_INFLIGHT
    assert (after["sent"], after["dropped"]) == (shadow.MAX_INFLIGHT, requests - shadow.MAX_INFLIGHT)
    assert after["answered"] == after["agreed"] == shadow.MAX_INFLIGHT
    assert after["latency_ms"]["p50"] >= 500


def test_a_shadow_of_one_version_leaves_the_others_alone(shadowed):
    for version in ("1", "2"):
        shadowed.add("m", version=version, code=shadowed.code(LIVE))
    shadow_to(shadowed, endpoint="m/2")

    async def scenario():
        await shadowed.plane.infer("m", "1", {"v": 2})
        await shadowed.plane.infer("m", "2", {"v": 3})
        await shadowed.plane.infer("m", None, {"v": 4})  # the newest: m/2, but not asked for by that name
        return await settled(shadowed, "m/2")

    assert run(shadowed, scenario)["sent"] == 1


def test_add_shadow_checks_both_ends_and_remove_takes_the_shadow_first(shadowed):
    control, sid = shadowed.control, shadowed.id
    with pytest.raises(NotFound, match="no shadow target 'nope'.*there are: live, target"):
        control.add_shadow(sid, endpoint="live", target="nope")
    with pytest.raises(NotFound, match="no endpoint to shadow 'ghost'"):
        control.add_shadow(sid, endpoint="ghost", target="target")
    with pytest.raises(InvalidInput, match="cannot shadow itself"):
        control.add_shadow(sid, endpoint="live", target="live")
    with pytest.raises(InvalidInput, match="fraction"):
        control.add_shadow(sid, endpoint="live", target="target", fraction=0)
    added = control.add_shadow(sid, endpoint="live", target="target", fraction=0.2)
    assert added.revision.summary == "shadow of live set: 0.2 of its requests copied to target"
    assert control.add_shadow(sid, endpoint="live", target="target").warnings == [
        "endpoint 'live' had a shadow: replaced it"
    ]
    assert control.remove_endpoint(sid, "live").revision.summary == "shadow of live removed"
    config = shadowed.store.get_revision(sid).config
    assert config.shadows == {} and "live" in config.endpoints
    assert ServiceConfig.model_validate({"endpoints": {}}).shadows == {}  # revisions from before shadows load
