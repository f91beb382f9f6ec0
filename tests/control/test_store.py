"""The store on SQLite and on a real PostgreSQL server: services, revisions, instances, events."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import create_engine, insert, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError

from ferry.control.spec import EndpointSpec, ServiceConfig
from ferry.control.store import Store
from ferry.db import instances, is_conflict, retry_on_conflict, services
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


def test_a_fresh_store_opened_by_many_at_once(store_url: str):
    """Four processes' worth of first starts race to create the schema; all of them get a working store."""
    start = threading.Barrier(4)
    opened: list[Store | BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            opened.append(Store.open(store_url))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            opened.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(s, Store) for s in opened), opened
    svc = opened[0].create_service("s")
    assert [s.id for s in opened[3].list_services()] == [svc.id]


def _age(store: Store, instance_id: str, seconds: float) -> None:
    """Make the instance's last heartbeat ``seconds`` old, as if its process had died then."""
    with store.sql.begin() as conn:
        conn.execute(update(instances).where(instances.c.id == instance_id).values(heartbeat_at=time.time() - seconds))


def _instance_ids(store: Store) -> set[str]:
    with store.sql.connect() as conn:
        return set(conn.execute(select(instances.c.id)).scalars())


def test_dead_instances_are_pruned(store: Store):
    svc = store.create_service("s")
    crashed, paused, alive = (store.register_instance(svc.id, "host", pid) for pid in (1, 2, 3))
    _age(store, crashed, 600)  # silent for 300 heartbeat intervals: dead
    _age(store, paused, 30)  # silent for 15: not live, not yet dead
    assert [i.id for i in store.list_instances(svc.id)] == [alive]
    assert _instance_ids(store) == {paused, alive}
    assert store.heartbeat(crashed, 1, {}) is False  # tells a process that was only paused to register again
    assert store.heartbeat(paused, 1, {}) is True
    _age(store, paused, 600)
    store.register_instance(svc.id, "host", 4)
    assert paused not in _instance_ids(store)


def test_conflicts_are_told_apart_by_error_class_not_text(store_url: str):
    """Real contention on each store: what a concurrent writer causes is retried, other failures are not."""
    engine = Store.open(store_url).sql
    seen = []
    for provoke in _CONFLICTS[engine.dialect.name]:
        with pytest.raises(DBAPIError) as caught:
            provoke(engine)
        assert is_conflict(caught.value), caught.value
        orig = caught.value.orig
        seen.append(getattr(orig, "sqlite_errorname", type(orig).__name__))
    assert seen == _EXPECTED[engine.dialect.name]
    with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert not is_conflict(caught.value)
    with pytest.raises(DBAPIError) as caught, engine.begin() as conn:  # NOT NULL violated: retrying cannot help
        conn.execute(insert(services).values(id="x", name=None, project="", tags=[], created_at=0.0))
    assert not is_conflict(caught.value)


def test_retry_waits_out_a_writer_holding_the_sqlite_lock(tmp_path):
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    Store.open(url)  # the schema
    blocker = sqlite3.connect(tmp_path / "locked.db", check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    impatient = create_engine(url, connect_args={"timeout": 0.01})  # no busy handler to hide the conflict
    threading.Timer(0.3, blocker.rollback).start()
    attempts = []

    def create() -> None:
        attempts.append(1)
        with impatient.begin() as conn:
            conn.execute(insert(services).values(id="s", name="s", project="", tags=[], created_at=0.0))

    retry_on_conflict(create)
    assert len(attempts) > 1 and Store(impatient).get_service("s").name == "s"
    blocker.close()


def _sqlite_busy(engine) -> None:
    path = engine.url.database
    holder = sqlite3.connect(path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        impatient = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.01})
        with impatient.begin() as conn:
            conn.execute(insert(services).values(id="busy", name="s", project="", tags=[], created_at=0.0))
    finally:
        holder.rollback()
        holder.close()


def _sqlite_stale_snapshot(engine) -> None:
    """A read transaction that tries to write after another writer committed: SQLITE_BUSY_SNAPSHOT."""
    path = engine.url.database
    reader, writer = sqlite3.connect(path, isolation_level=None), sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM services").fetchall()
        writer.execute("INSERT INTO services (id, name, project, tags, created_at) VALUES ('w', 's', '', '[]', 0)")
        reader.execute("INSERT INTO services (id, name, project, tags, created_at) VALUES ('r', 's', '', '[]', 0)")
    except sqlite3.OperationalError as exc:
        raise OperationalError("stale snapshot", None, exc) from exc
    finally:
        reader.close()
        writer.close()


def _pg_unique(engine) -> None:
    for _ in range(2):
        with engine.begin() as conn:
            conn.execute(insert(services).values(id="dup", name="s", project="", tags=[], created_at=0.0))


def _pg_serialization(engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(services).values(id="ser", name="s", project="", tags=[], created_at=0.0))
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as first, engine.connect() as second:
        first.execute(select(services.c.name).where(services.c.id == "ser")).all()
        with second.begin():
            second.execute(update(services).where(services.c.id == "ser").values(name="second"))
        first.execute(update(services).where(services.c.id == "ser").values(name="first"))


def _pg_deadlock(engine) -> None:
    with engine.begin() as conn:
        for sid in ("d1", "d2"):
            conn.execute(insert(services).values(id=sid, name="s", project="", tags=[], created_at=0.0))
    first, second = engine.connect(), engine.connect()
    errors: list[BaseException] = []

    def lock_both(conn, a: str, b: str, ready: threading.Barrier) -> None:
        try:
            with conn.begin():
                conn.execute(update(services).where(services.c.id == a).values(name=a))
                ready.wait()
                conn.execute(update(services).where(services.c.id == b).values(name=a))
        except DBAPIError as exc:
            errors.append(exc)

    ready = threading.Barrier(2)
    threads = [
        threading.Thread(target=lock_both, args=(first, "d1", "d2", ready)),
        threading.Thread(target=lock_both, args=(second, "d2", "d1", ready)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first.close()
    second.close()
    (error,) = errors  # PostgreSQL picks one victim
    raise error


_CONFLICTS = {
    "sqlite": [_sqlite_busy, _sqlite_stale_snapshot],
    "postgresql": [_pg_unique, _pg_serialization, _pg_deadlock],
}
_EXPECTED = {
    "sqlite": ["SQLITE_BUSY", "SQLITE_BUSY_SNAPSHOT"],
    "postgresql": ["UniqueViolation", "SerializationFailure", "DeadlockDetected"],
}
