"""The store on SQLite and on a real PostgreSQL server: services, revisions, instances, events."""

from __future__ import annotations

import threading
import time

import pytest

from ferry.control.spec import EndpointSpec, ServiceConfig
from ferry.control.store import Store
from ferry.errors import Conflict, NotFound


@pytest.fixture
def store(store_url: str) -> Store:
    return Store.open(store_url)


def add_endpoint(name: str):
    def change(config: ServiceConfig):
        spec = EndpointSpec(name=name, engine="custom")
        return config.model_copy(update={"endpoints": {**config.endpoints, spec.key: spec}}), f"add {name}"

    return change


def test_new_service_starts_at_revision_one_with_empty_config(store: Store):
    svc = store.create_service("serving example", "proj", ["a"])
    assert store.head(svc.id) == 1
    rev = store.get_revision(svc.id)
    assert rev.number == 1 and rev.config == ServiceConfig()
    assert store.get_service(svc.id).tags == ["a"]


def test_commit_writes_next_revision_and_keeps_old_ones(store: Store):
    svc = store.create_service("s")
    rev = store.commit(svc.id, add_endpoint("a"))
    assert rev.number == 2 and rev.summary == "add a"
    store.commit(svc.id, add_endpoint("b"))
    assert [r.number for r in store.list_revisions(svc.id)] == [1, 2, 3]
    assert set(store.get_revision(svc.id, 2).config.endpoints) == {"a"}
    assert set(store.get_revision(svc.id).config.endpoints) == {"a", "b"}


def test_unknown_service_and_revision_are_not_found(store: Store):
    svc = store.create_service("s")
    with pytest.raises(NotFound, match="no service"):
        store.get_revision("nope")
    with pytest.raises(NotFound, match="no revision 7"):
        store.get_revision(svc.id, 7)


def test_resolve_service_by_id_name_or_only_one(store: Store):
    with pytest.raises(NotFound, match="ferry create"):
        store.resolve_service(None)
    a = store.create_service("same")
    assert store.resolve_service(None).id == a.id
    assert store.resolve_service("same").id == a.id
    b = store.create_service("same")
    with pytest.raises(Conflict) as err:
        store.resolve_service("same")
    assert a.id in str(err.value) and b.id in str(err.value)
    with pytest.raises(Conflict):
        store.resolve_service(None)
    assert store.resolve_service(b.id).id == b.id


def test_concurrent_writers_never_lose_an_edit(store_url: str):
    """Four writers with their own connections race; every edit survives, numbers stay contiguous."""
    svc = Store.open(store_url).create_service("race")
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        own = Store.open(store_url)
        try:
            for i in range(10):
                own.commit(svc.id, add_endpoint(f"{tag}{i}"))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = Store.open(store_url)
    assert len(store.get_revision(svc.id).config.endpoints) == 40
    assert [r.number for r in store.list_revisions(svc.id)] == list(range(1, 42))


def test_instances_register_heartbeat_and_age_out(store: Store):
    svc = store.create_service("s")
    iid = store.register_instance(svc.id, "host1", 1234)
    store.heartbeat(iid, 3, {"endpoints": {"a": "ready"}})
    (inst,) = store.list_instances(svc.id)
    assert inst.revision == 3 and inst.state == {"endpoints": {"a": "ready"}} and inst.pid == 1234
    time.sleep(0.05)
    assert store.list_instances(svc.id, alive_within=0.01) == []
    store.remove_instance(iid)
    assert store.list_instances(svc.id, alive_within=None) == []


def test_events_are_kept_in_order(store: Store):
    svc = store.create_service("s")
    store.add_event("model.published", "m1 published", svc.id, model_id="m1")
    store.add_event("model.tagged", "m1 tagged", svc.id, model_id="m1")
    kinds = [e["kind"] for e in store.list_events(svc.id)]
    assert kinds == ["model.tagged", "model.published"]
    assert store.list_events(svc.id)[0]["data"] == {"model_id": "m1"}
