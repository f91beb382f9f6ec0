"""Which Ray Serve application runs which endpoint version, with what replicas; the missing-extra error."""

from __future__ import annotations

import sys

import pytest

from ferry.control.spec import EndpointSpec
from ferry.errors import InvalidInput
from ferry.rayserve import require
from ferry.rayserve.apps import ingress_app, model_app, model_options

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
    }
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1}
    default = model_options(spec())
    assert default["autoscaling_config"]["max_replicas"] == 1 and default["ray_actor_options"]["num_cpus"] == 1
    assert default["name"] == "model" and default["max_ongoing_requests"] == 32


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(InvalidInput, match=r"pip install 'ferry\[ray\]'"):
        require()
