"""Which Ray Serve application runs which endpoint version, with what replicas; the missing-extra error."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from ferry.control.spec import EndpointSpec
from ferry.errors import InvalidInput
from ferry.rayserve import require
from ferry.rayserve.apps import Pace, bridged, colocated, ingress_app, model_app, model_options
from ferry.rayserve.metrics import targets
from ferry.rayserve.scaling import WAITING, ingress_policy, model_waiting

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


def ctx(ongoing: float, waiting: dict | None, current: int = 2, target: float = 4) -> SimpleNamespace:
    metrics = None if waiting is None else {WAITING: waiting}
    return SimpleNamespace(aggregated_metrics=metrics, total_num_requests=ongoing, current_num_replicas=current,
                           config=SimpleNamespace(target_ongoing_requests=target))  # fmt: skip


def test_the_ingress_sizes_on_requests_not_waiting_for_a_model():
    assert ingress_policy(ctx(20.0, {"a": 4.0, "b": 3.0}))[0] == 4  # 13 of 20 in the ingress's hands, 4 a replica
    assert ingress_policy(ctx(12.0, {"a": 6.0, "b": 6.0}))[0] == 1  # all waiting on models: one replica will do
    assert ingress_policy(ctx(3.0, {"a": 4.0}))[0] == 1  # windows disagree a little: never below one
    assert ingress_policy(ctx(9.0, None, current=3))[0] == 3  # no reports yet: stay


def test_a_replica_reports_the_requests_waiting_on_model_deployments():
    plane = SimpleNamespace(table=SimpleNamespace(runtimes={
        "a": SimpleNamespace(inflight=8, engine=SimpleNamespace(waiting=5)),
        "b": SimpleNamespace(inflight=3, engine=SimpleNamespace(waiting=2)),
        "c": SimpleNamespace(inflight=3, engine=SimpleNamespace()),  # a model in this process
    }))  # fmt: skip
    assert model_waiting(plane) == 7


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
