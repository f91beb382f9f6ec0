"""Schema revisions on SQLite and a real PostgreSQL: a store of today's schema (the baseline), filled through
the store's API, upgraded with nothing lost; SQLite by itself, PostgreSQL only through `ferry migrate`."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, insert, select, text

import ferry.control.store
from ferry import migrations
from ferry.control.spec import EndpointSpec, ServiceConfig
from ferry.control.store import Store
from ferry.db import make_sql_engine, metadata, new_engine
from ferry.migrations import BASELINE, HEAD, SchemaMismatch
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry
from tests.conftest import Ferry

FUTURE = "0099_from_a_newer_ferry"


@pytest.fixture(autouse=True)
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which stores this process found ready: each test opens its stores as a new process would."""
    monkeypatch.setattr(migrations, "_ready", set())


def baseline_module() -> Any:
    return migrations.scripts().get_revision(BASELINE).module


def make_baseline(url: str, stamped: bool) -> None:
    """A store of the baseline schema: made by the baseline script and stamped, or (``stamped=False``)
    by today's CREATE statements with no ``alembic_version``, as every ferry before migrations made one."""
    engine = new_engine(url)
    with engine.begin() as conn:
        if stamped:
            cfg = migrations.config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, BASELINE)
        else:
            baseline_module().metadata.create_all(conn)
    engine.dispose()


def fill(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Services, revisions, instances, events and models written through the store's and registry's API as
    today's ferry writes them (its ``revisions`` table, the baseline's); returns what they read back."""
    with monkeypatch.context() as patched:
        patched.setattr(ferry.control.store, "revisions", baseline_module().metadata.tables["revisions"])
        patched.setattr(ferry.control.store, "insert", _baseline_insert)  # the baseline's rows have no author
        store, registry = Store(new_engine(url)), registry_on(new_engine(url), tmp_path)
        first = store.create_service("serving example", "proj", ["a", "b"])
        second = store.create_service("other")
        for name in ("x", "y", "z"):
            store.commit(first.id, add_endpoint(name))
        store.commit(second.id, add_endpoint("only"))
        model_file = tmp_path / "model.pkl"
        model_file.write_bytes(b"model bytes" * 100)
        model = registry.upload("m", path=model_file, project="p", framework="sklearn", tags=["prod"])
        registry.publish(model.id)
        again = registry.register(model.artifact, "m2", "p", metadata={"k": [1, 2]})
        registry.tag(again.id, ["staging"])
        instance = store.register_instance(first.id, "host1", 4242)
        store.heartbeat(instance, 4, {"endpoints": {"x": "ready"}, "heartbeat_interval": 3600})
        store.add_event("model.published", "m published", first.id, model_id=model.id)
        store.add_event("note", "no service", None, n=1)
        seen = snapshot(store, registry)
        seen["counts"] = counts(store.sql)
        store.sql.dispose()
        registry.sql.dispose()
    return seen


def snapshot(store: Store, registry: ModelRegistry) -> dict[str, Any]:
    services = store.list_services()
    return {
        "services": services,
        "revisions": {s.id: store.list_revisions(s.id) for s in services},
        "instances": {s.id: store.list_instances(s.id, alive_within=1e9) for s in services},
        "events": store.list_events(),
        "models": registry.list(),
    }


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        names = ("services", "revisions", "instances", "events", "models")
        return {name: conn.execute(select(func.count()).select_from(text(name))).scalar_one() for name in names}


def registry_on(engine: Engine, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(engine, ArtifactStore(str(tmp_path / "artifacts"), tmp_path / "cache", progress=False))


class _BaselineInsert:
    """``insert(table).values(...)`` for a table of the baseline schema: what it has no column for is left out."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def values(self, **columns: Any) -> Any:
        return insert(self.table).values(**{k: v for k, v in columns.items() if k in self.table.c})


def _baseline_insert(table: Any) -> Any:
    return _BaselineInsert(table)


def add_endpoint(name: str):
    def change(config: ServiceConfig):
        spec = EndpointSpec(name=name, engine="custom")
        return config.model_copy(update={"endpoints": {**config.endpoints, spec.key: spec}}), f"add {name}"

    return change


def revision_of(url: str) -> tuple[str | None, bool]:
    engine = new_engine(url)
    try:
        with engine.connect() as conn:
            return migrations._read(conn)
    finally:
        engine.dispose()


def schema_diff(engine: Engine) -> list[Any]:
    """What differs between the store's tables and ``ferry.db.metadata`` (Alembic's autogenerate compare)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, metadata)


def run_ferry(tmp_path: Path, url: str, *args: str, ok: bool = True):
    return Ferry(tmp_path)("migrate", "--store", url, *args, ok=ok)


# --- the upgrade path -------------------------------------------------------------------------------


@pytest.mark.parametrize("stamped", [False, True], ids=["made-before-migrations", "stamped-baseline"])
def test_a_baseline_store_filled_then_upgraded_keeps_every_row(
    store_url: str, stamped: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    make_baseline(store_url, stamped)
    assert revision_of(store_url) == (BASELINE, stamped)
    before = fill(store_url, tmp_path, monkeypatch)
    assert before["counts"] == {"services": 2, "revisions": 6, "instances": 1, "events": 2, "models": 2}

    if store_url.startswith("sqlite"):
        with caplog.at_level(logging.WARNING, logger="ferry.migrations"):
            store = Store.open(store_url)  # upgrades in place, by itself
        assert f"from schema revision {BASELINE} to {HEAD}" in caplog.text
    else:
        with pytest.raises(SchemaMismatch) as refused:
            Store.open(store_url)
        message = str(refused.value)
        assert "`ferry migrate`" in message and f"schema revision {BASELINE}" in message and HEAD in message
        assert ("made before ferry kept schema revisions" in message) is not stamped
        assert revision_of(store_url) == (BASELINE, stamped)  # refusing wrote nothing
        planned = run_ferry(tmp_path, store_url, "--dry-run").out
        assert f"would upgrade the store at {store_url} from schema revision {BASELINE} to {HEAD}" in planned
        assert revision_of(store_url) == (BASELINE, stamped)
        done = run_ferry(tmp_path, store_url).out
        assert f"upgraded the store at {store_url} from schema revision {BASELINE} to {HEAD}" in done, done
        store = Store.open(store_url)

    assert revision_of(store_url) == (HEAD, True)
    assert schema_diff(store.sql) == []  # upgraded is the same schema a new store gets
    after = snapshot(store, registry_on(store.sql, tmp_path))
    assert after == {key: value for key, value in before.items() if key != "counts"}
    assert counts(store.sql) == before["counts"]
    with store.sql.connect() as conn:  # the new column is there, empty on the old rows
        assert set(conn.execute(select(metadata.tables["revisions"].c.author)).scalars()) == {None}
    service = after["services"][0]
    assert store.commit(service.id, add_endpoint("after")).number == 5
    assert set(store.get_revision(service.id).config.endpoints) == {"x", "y", "z", "after"}
    assert "already at head" in run_ferry(tmp_path, store_url).out


def test_a_new_store_is_created_at_head(store_url: str, tmp_path: Path):
    store = Store.open(store_url)
    assert revision_of(store_url) == (HEAD, True)
    assert schema_diff(store.sql) == []
    assert store.list_services() == []
    assert f"the store at {store_url} is already at head ({HEAD})" in run_ferry(tmp_path, store_url).out


def test_migrate_creates_a_new_store(store_url: str, tmp_path: Path):
    assert (
        f"would create a new store at {store_url} at schema revision {HEAD}"
        in run_ferry(tmp_path, store_url, "--dry-run").out
    )
    assert revision_of(store_url) == (None, False)
    out = run_ferry(tmp_path, store_url).out
    assert f"created a new store at {store_url} at schema revision {HEAD}:\n  {BASELINE}: " in out
    assert revision_of(store_url) == (HEAD, True)


def test_a_store_from_a_newer_ferry_is_refused_naming_its_revision(store_url: str, tmp_path: Path):
    Store.open(store_url).sql.dispose()
    engine = new_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE})
    engine.dispose()
    migrations._ready.clear()
    for opening in (lambda: Store.open(store_url), lambda: Store(make_sql_engine(store_url, False)).list_services()):
        with pytest.raises(SchemaMismatch) as refused:
            opening()
        assert FUTURE in str(refused.value) and "a newer ferry made it; upgrade ferry" in str(refused.value)
    result = run_ferry(tmp_path, store_url, ok=False)
    assert result.code == 1 and FUTURE in result.err and "upgrade ferry" in result.err
    assert revision_of(store_url) == (FUTURE, True)  # untouched


def test_a_server_made_without_connecting_checks_at_its_first_connection(pg_url: str, tmp_path: Path):
    """`ferry serve`'s workers make their engine before the store answers: the check waits for the first
    connection, and fails every connection until `ferry migrate` has run, then passes."""
    make_baseline(pg_url, stamped=True)
    store = Store(make_sql_engine(pg_url, create_tables=False))
    for _ in range(2):
        with pytest.raises(SchemaMismatch, match="ferry migrate"):
            store.list_services()
    run_ferry(tmp_path, pg_url)
    assert store.list_services() == []


def test_the_scripts_end_at_head_in_one_line():
    scripts = migrations.scripts()
    assert scripts.get_current_head() == HEAD  # the constant the fast path compares with
    chain = [s.revision for s in reversed(list(scripts.walk_revisions()))]
    assert chain[0] == BASELINE and chain[-1] == HEAD and len(chain) == len(set(chain))
    for script in scripts.walk_revisions():
        assert Path(script.path).stem == script.revision  # the file is named after its revision
    baseline = baseline_module().metadata
    assert set(baseline.tables) == set(metadata.tables)


def test_processes_opening_an_old_or_new_store_at_once_change_it_once(store_url: str):
    """Three processes open the store at the same moment: an old SQLite store is upgraded by one of them, a
    new PostgreSQL store created by one of them; each of them gets a working store."""
    sqlite = store_url.startswith("sqlite")
    if sqlite:
        make_baseline(store_url, stamped=False)
    code = textwrap.dedent(f"""
        import logging, sys, time
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        from ferry.control.store import Store
        while time.time() < float(sys.argv[1]):
            time.sleep(0.001)
        print(len(Store.open({store_url!r}).list_services()))
    """)
    start = str(time.time() + 3.0)  # every process past its imports, then all at once
    procs = [subprocess.Popen([sys.executable, "-c", code, start], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]  # fmt: skip
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    assert [out.strip() for out, _ in results] == ["0", "0", "0"]
    assert sum("upgraded the store" in err for _, err in results) == (1 if sqlite else 0), results
    assert revision_of(store_url) == (HEAD, True)


def test_sqlite_upgrades_under_its_write_lock_and_looks_again_once_it_has_it(tmp_path: Path):
    """Another process holds the write lock, upgrading the store: opening it waits, then finds it at head
    and changes nothing (running the scripts again would fail on the column they add)."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    make_baseline(url, stamped=False)
    other = new_engine(url)
    opened: list[Store | BaseException] = []

    def open_store() -> None:
        try:
            opened.append(Store.open(url))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            opened.append(exc)

    with other.begin() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        opener = threading.Thread(target=open_store)
        opener.start()
        opener.join(0.5)
        assert opener.is_alive()  # waiting for the lock
        migrations._upgrade(conn)
    opener.join(30)
    other.dispose()
    assert len(opened) == 1 and isinstance(opened[0], Store), opened
    assert revision_of(url) == (HEAD, True)
