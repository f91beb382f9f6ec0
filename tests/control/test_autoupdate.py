"""Auto-update rules: the pure reconcile, the rule operation, and concurrent reconcilers on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.control.autoupdate import reconcile, reconcile_service
from ferry.control.service import ServiceControl
from ferry.control.spec import AutoUpdateSpec, EndpointSpec, ModelQuery, ServiceConfig
from ferry.control.store import Store
from ferry.errors import InvalidInput
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry
from tests.budget import examples

QUERY = ModelQuery(name="m", project="p", tags=("prod",))


def rule(max_versions: int = 2, engine: str = "sklearn", endpoint: str = "x_auto") -> AutoUpdateSpec:
    template = EndpointSpec(name=endpoint, engine=engine, auto_update=endpoint, aux_config={"instances": 1})
    return AutoUpdateSpec(endpoint=endpoint, query=QUERY, template=template, max_versions=max_versions)


def with_rule(r: AutoUpdateSpec, **endpoints: EndpointSpec) -> ServiceConfig:
    return ServiceConfig(auto_update={r.endpoint: r}, endpoints=endpoints)


def served(config: ServiceConfig) -> dict[str, str]:
    return {key: spec.model_id for key, spec in config.endpoints.items()}


# --- the pure reconcile -------------------------------------------------------------------------


def test_a_rule_deploys_the_newest_matches_from_version_one_with_its_template():
    config, changes = reconcile(with_rule(rule(2)), {"x_auto": ["a", "b", "c"]})
    assert served(config) == {"x_auto/1": "b", "x_auto/2": "c"}
    spec = config.endpoints["x_auto/1"]
    assert (spec.engine, spec.aux_config, spec.auto_update) == ("sklearn", {"instances": 1}, "x_auto")
    assert changes == ["+x_auto/1 (model b)", "+x_auto/2 (model c)"]


def test_new_models_take_the_next_version_and_the_oldest_beyond_max_versions_leave():
    config, _ = reconcile(with_rule(rule(2)), {"x_auto": ["a"]})
    config, _ = reconcile(config, {"x_auto": ["a", "b"]})
    assert served(config) == {"x_auto/1": "a", "x_auto/2": "b"}
    config, changes = reconcile(config, {"x_auto": ["a", "b", "c"]})
    assert served(config) == {"x_auto/2": "b", "x_auto/3": "c"}
    assert changes == ["-x_auto/1", "+x_auto/3 (model c)"]


def test_a_model_that_stops_matching_withdraws_its_version_and_numbers_keep_growing():
    config, _ = reconcile(with_rule(rule(3)), {"x_auto": ["a", "b", "c"]})
    config, changes = reconcile(config, {"x_auto": ["a", "c"]})
    assert served(config) == {"x_auto/1": "a", "x_auto/3": "c"} and changes == ["-x_auto/2"]
    config, _ = reconcile(config, {"x_auto": ["a", "c", "d"]})
    assert served(config)["x_auto/4"] == "d"


def test_withdrawing_the_newest_falls_back_to_the_one_before_not_to_a_retired_model():
    config, _ = reconcile(with_rule(rule(2)), {"x_auto": ["a", "b", "c"]})
    config, changes = reconcile(config, {"x_auto": ["a", "b"]})
    assert served(config) == {"x_auto/1": "b"} and changes == ["-x_auto/2"]
    config, _ = reconcile(config, {"x_auto": []})
    config, _ = reconcile(config, {"x_auto": ["a", "b"]})  # nothing left to fall back to: the newest again
    assert served(config) == {"x_auto/3": "a", "x_auto/4": "b"}


def test_nothing_to_change_returns_the_same_config_object():
    config, _ = reconcile(with_rule(rule(2)), {"x_auto": ["a", "b"]})
    again, changes = reconcile(config, {"x_auto": ["a", "b"]})
    assert again is config and changes == []
    empty = ServiceConfig()
    assert reconcile(empty, {})[0] is empty


def test_endpoints_the_rule_did_not_make_are_left_alone_and_never_overwritten():
    manual = EndpointSpec(name="x_auto", version="1", engine="custom")
    other = EndpointSpec(name="y", engine="custom")
    config, _ = reconcile(with_rule(rule(2), **{"x_auto/1": manual, "y": other}), {"x_auto": ["a"]})
    assert config.endpoints["x_auto/1"] == manual and config.endpoints["y"] == other
    assert served(config)["x_auto/2"] == "a"
    config, _ = reconcile(config, {"x_auto": []})
    assert set(config.endpoints) == {"x_auto/1", "y"}


def test_a_changed_template_redeploys_the_same_models_at_the_same_versions():
    config, _ = reconcile(with_rule(rule(2)), {"x_auto": ["a", "b"]})
    config = config.model_copy(update={"auto_update": {"x_auto": rule(2, engine="xgboost")}})
    config, changes = reconcile(config, {"x_auto": ["a", "b"]})
    assert served(config) == {"x_auto/1": "a", "x_auto/2": "b"}
    assert {s.engine for s in config.endpoints.values()} == {"xgboost"} and len(changes) == 2


@settings(max_examples=examples(150), deadline=None)
@given(
    max_versions=st.integers(1, 4),
    steps=st.lists(st.lists(st.sampled_from("abcdefg"), unique=True, max_size=6), min_size=1, max_size=8),
)
def test_any_sequence_of_registry_states_keeps_the_rules_promises(max_versions: int, steps: list[list[str]]):
    config = with_rule(rule(max_versions))
    versions: dict[str, str] = {}
    highest = 0
    for ids in steps:
        config, _ = reconcile(config, {"x_auto": ids})
        deployed = {spec.model_id: spec.version for spec in config.endpoints.values()}
        assert len(deployed) == len(config.endpoints)  # no model twice
        assert set(deployed) <= set(ids) and len(deployed) <= max_versions
        if ids:
            assert ids[-1] in deployed  # the newest match is always served
            oldest = min(ids.index(m) for m in deployed)
            newer = ids[oldest:]  # a match newer than one served is served too, unless max_versions are newer
            assert set(deployed) == set(newer[-max_versions:])
        for model_id, version in deployed.items():
            if model_id in versions:
                assert version == versions[model_id]  # a model keeps its version while it stays
            else:
                assert int(version) > highest  # a new one goes above every version there was
        highest = max([highest, *(int(v) for v in deployed.values())])
        versions = deployed
        assert reconcile(config, {"x_auto": ids})[0] is config  # converged: a second pass changes nothing


# --- over a real store --------------------------------------------------------------------------


@pytest.fixture
def parts(store_url: str, tmp_path: Path) -> tuple[Store, ModelRegistry, ServiceControl]:
    store = Store.open(store_url)
    artifacts = ArtifactStore(str(tmp_path / "artifacts"), tmp_path / "cache", progress=False)
    registry = ModelRegistry(store.sql, artifacts)
    return store, registry, ServiceControl(store, registry, artifacts)


def upload(registry: ModelRegistry, tmp_path: Path, n: int, **kwargs) -> str:
    path = tmp_path / f"model{n}.pkl"
    path.write_bytes(f"model {n}".encode())
    time.sleep(0.002)  # distinct created_at, as separate uploads have
    return registry.upload("m", path, project="p", **kwargs).id


def test_a_new_rule_deploys_what_already_matches_in_one_revision(parts, tmp_path: Path):
    store, registry, control = parts
    service = store.create_service("s")
    old = upload(registry, tmp_path, 1, tags=["prod"])
    upload(registry, tmp_path, 2, tags=["dev"])
    outcome = control.add_auto_update(service.id, engine="sklearn", endpoint="x_auto", query=QUERY, max_versions=2)
    assert outcome.revision.number == 2
    assert served(outcome.revision.config) == {"x_auto/1": old}
    assert "auto-update rule x_auto set" in outcome.revision.summary and "+x_auto/1" in outcome.revision.summary
    assert reconcile_service(store, registry, service.id) is None and store.head(service.id) == 2


def test_a_rule_is_checked_before_anything_is_written(parts, tmp_path: Path):
    store, registry, control = parts
    service = store.create_service("s")
    with pytest.raises(InvalidInput, match="max_batch_sizee"):
        control.add_auto_update(
            service.id, engine="sklearn", endpoint="x", query=QUERY, aux_config={"max_batch_sizee": 2}
        )
    with pytest.raises(InvalidInput, match="--name, --project or --tags"):
        control.add_auto_update(service.id, engine="sklearn", endpoint="x", query=ModelQuery())
    with pytest.raises(InvalidInput, match="max_versions"):
        control.add_auto_update(service.id, engine="sklearn", endpoint="x", query=QUERY, max_versions=0)
    assert store.head(service.id) == 1


def test_concurrent_reconcilers_deploy_each_model_once(parts, tmp_path: Path):
    store, registry, control = parts
    service = store.create_service("s")
    control.add_auto_update(service.id, engine="sklearn", endpoint="x_auto", query=QUERY, max_versions=3)
    new = [upload(registry, tmp_path, n, tags=["prod"]) for n in range(3)]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def reconciler() -> None:
        try:
            start.wait()
            reconcile_service(store, registry, service.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reconciler) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.head(service.id) == 3  # the losers found nothing left to do and wrote nothing
    assert served(store.get_revision(service.id).config) == {"x_auto/1": new[0], "x_auto/2": new[1], "x_auto/3": new[2]}
