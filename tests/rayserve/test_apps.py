"""Which Ray Serve application runs which endpoint version, with what replicas; the missing-extra error."""

from __future__ import annotations

import asyncio
import math
import sys
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.control.spec import EndpointSpec
from ferry.errors import InvalidInput
from ferry.metrics.targets import targets
from ferry.rayserve import require
from ferry.rayserve.apps import Pace, bridged, colocated, ingress_app, model_app, model_options
from ferry.rayserve.scaling import BUSY, HELD, Held, ingress_policy, stats

SERVICE = "0123456789abcdef0123456789abcdef"


def spec(**changes) -> EndpointSpec:
    fields = {"name": "fraud", "version": "2", "engine": "sklearn", "model_id": "m1", **changes}
    return EndpointSpec(**fields)


def test_one_application_per_spec_named_after_the_service_and_endpoint():
    app = model_app(SERVICE, spec())
    assert app == model_app(SERVICE, spec()), "the launcher and every ingress replica must agree on the name"
    assert app.startswith(ingress_app(SERVICE) + "-fraud_2-")
    changed = {model_app(SERVICE, spec(**c)) for c in ({"model_id": "m2"}, {"aux_config": {"max_batch_size": 8}})}
    assert app not in changed and len(changed) == 2, "a changed version is a new application beside the old"
    assert model_app("f" * 32, spec()) != app


def test_replicas_and_resources_come_from_aux_ray_keys_with_defaults():
    ray = {"min_replicas": 0, "max_replicas": 8, "target_ongoing_requests": 16, "num_cpus": 0.5, "num_gpus": 1}
    options = model_options(spec(aux_config={"ray": ray}))
    assert options["autoscaling_config"] == {
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 8,
        "target_ongoing_requests": 16,
        "upscale_delay_s": 10.0,
        "downscale_delay_s": 120.0,
        "look_back_period_s": 10.0,
        "metrics_interval_s": 5.0,
    }
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1}
    default = model_options(spec())
    assert default["autoscaling_config"]["max_replicas"] == 1 and default["ray_actor_options"]["num_cpus"] == 1
    assert default["name"] == "model" and default["max_ongoing_requests"] == 32


@pytest.mark.parametrize(
    ("ray", "bridges", "colocates"),
    [
        ({}, True, False),  # by default a new CPU version answers from the ingress while its deployment starts
        ({"bridge": False}, False, False),
        ({"num_gpus": 1}, False, False),  # the ingress holds no GPU: such a version waits for its deployment
        ({"num_gpus": 0.5, "bridge": True}, False, False),
        ({"colocate": True}, False, True),  # always in the ingress: nothing to bridge to
    ],
)
def test_which_versions_bridge_and_which_colocate(ray, bridges, colocates):
    version = spec(aux_config={"ray": ray})
    assert (bridged(version), colocated(version)) == (bridges, colocates)


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(InvalidInput, match=r"pip install 'ferry\[ray\]'"):
        require()


def test_aux_delays_win_over_the_service_pace():
    pace = Pace(upscale_delay_s=1, downscale_delay_s=5, look_back_s=2)
    scaling = model_options(spec(aux_config={"ray": {"upscale_delay_s": 0}}), pace)["autoscaling_config"]
    assert (scaling["upscale_delay_s"], scaling["downscale_delay_s"], scaling["look_back_period_s"]) == (0, 5, 2)


def ctx(held: dict | None, busy: dict | None, ongoing: float, queued: float = 0.0, current: int = 2) -> SimpleNamespace:
    metrics = {name: v for name, v in ((HELD, held), (BUSY, busy)) if v is not None}
    return SimpleNamespace(aggregated_metrics=metrics, total_num_requests=ongoing, total_queued_requests=queued,
                           current_num_replicas=current, config=SimpleNamespace(target_ongoing_requests=4))  # fmt: skip


def test_the_ingress_sizes_on_the_share_of_its_requests_in_its_own_hands():
    assert ingress_policy(ctx({"a": 8.0, "b": 8.0}, {"a": 6.0, "b": 7.0}, 16.0))[0] == 4  # 13 of 16 busy, 4 a replica
    assert ingress_policy(ctx({"a": 8.0}, {"a": 0.0}, 8.0))[0] == 1  # all waiting on models: one replica will do
    # A model-bound load starting: Serve's count is at 8 already, the replica's window averages are not; their
    # ratio is right from the first report (8 - its average of those waiting would be 6, 2 replicas).
    assert ingress_policy(ctx({"a": 2.0}, {"a": 0.1}, 8.0))[0] == 1
    assert ingress_policy(ctx({"a": 4.0}, {"a": 4.0}, 10.0, queued=6.0))[0] == 3  # 4 held (all busy) + 6 queued
    assert ingress_policy(ctx({"a": 0.0}, {"a": 0.0}, 0.0))[0] == 1  # idle
    assert ingress_policy(ctx(None, None, 9.0, current=3))[0] == 3  # no reports yet: stay


counts = st.floats(0, 1000, allow_nan=False)


@given(st.lists(st.tuples(counts, st.floats(0, 1)), min_size=1, max_size=4), counts, st.floats(0, 1))
def test_the_ingress_never_asks_for_more_than_its_requests_call_for(replicas, total, queued_part):
    """At least one replica; never more than Serve's own policy would ask for all the requests (the busy
    share is at most 1); none beyond one when no request is in the ingress's own hands."""
    held = {str(i): h for i, (h, _) in enumerate(replicas)}
    busy = {str(i): h * part for i, (h, part) in enumerate(replicas)}
    wanted = ingress_policy(ctx(held, busy, total, queued=total * queued_part))[0]
    assert 1 <= wanted <= max(1, math.ceil(total / 4 * (1 + 1e-9)))
    assert ingress_policy(ctx(held, {k: 0.0 for k in held}, total))[0] == 1


def test_a_replica_reports_its_held_requests_and_those_not_waiting_on_model_deployments():
    plane = SimpleNamespace(table=SimpleNamespace(runtimes={
        "a": SimpleNamespace(engine=SimpleNamespace(waiting=5)),
        "b": SimpleNamespace(engine=SimpleNamespace(waiting=2)),
        "c": SimpleNamespace(engine=SimpleNamespace()),  # a model in this process
    }))  # fmt: skip
    assert stats(10, plane) == {HELD: 10.0, BUSY: 3.0}
    assert stats(4, plane) == {HELD: 4.0, BUSY: 0.0}  # shadow copies wait outside any held request


def test_held_counts_http_requests_until_their_answer_is_sent():
    seen: list[int] = []

    async def app(scope, receive, send):
        seen.append(held.now)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200})
            raise RuntimeError("after the answer started")

    async def sent(message):
        seen.append(held.now)

    held = Held(app)
    asyncio.run(held({"type": "lifespan"}, None, sent))
    with pytest.raises(RuntimeError):
        asyncio.run(held({"type": "http"}, None, sent))
    assert (seen, held.now) == ([0, 1, 1], 0)


def test_metrics_targets_list_every_process_that_reports_an_address_with_its_role():
    states = [
        {"role": "ray ingress", "metrics": "10.0.0.5:41000", "endpoints": {}},
        {"role": "ray model", "endpoint": "fraud/2", "metrics": "10.0.0.6:41001"},
        {"role": "ray launcher", "ray": {}},  # serves no metrics of its own
        {"endpoints": {}},  # a plain `ferry serve`: scraped at its HTTP port
    ]
    assert targets(SERVICE, states) == [
        {"targets": ["10.0.0.5:41000"], "labels": {"ferry_service": SERVICE, "ferry_role": "ray ingress"}},
        {
            "targets": ["10.0.0.6:41001"],
            "labels": {"ferry_service": SERVICE, "ferry_role": "ray model", "ferry_endpoint": "fraud/2"},
        },
    ]
