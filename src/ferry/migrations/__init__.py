"""The store's schema revisions, kept with Alembic: ``versions/`` holds one script per revision.

A store carries its revision in ``alembic_version``. The first time a process uses a store
(``ferry.db.make_sql_engine``), ``ensure`` compares it with this ferry's head revision:

- no tables at all: a new store, created at head and stamped (on PostgreSQL under the schema lock);
- ferry's tables but no ``alembic_version``: a store made before ferry kept revisions, taken as the baseline;
- SQLite at an older revision: upgraded in place, under SQLite's write lock (``BEGIN IMMEDIATE``), so two
  processes opening it at once upgrade it once;
- PostgreSQL at an older revision: refused, naming ``ferry migrate``. A fleet shares it: it is upgraded once,
  by hand, with the old servers stopped (``migrate``);
- a revision this ferry does not know: refused, naming it; a newer ferry made the store.

A new revision: ``from alembic import command; command.revision(ferry.migrations.config(), "what changes",
rev_id="0003_short_name", autogenerate=True)`` with ``FERRY_STORE`` at a store at head, then check the
script by hand and change ``ferry.db.metadata`` to match (tests/control/test_migrations.py compares them).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from ferry.errors import FerryError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

BASELINE = "0001_baseline"
"""The schema of every store made before ferry kept revisions; such a store has no ``alembic_version``."""
HEAD = "0002_revision_author"
"""This ferry's schema revision: the newest script's (a test checks), known without importing Alembic."""
VERSION_TABLE = "alembic_version"


class SchemaMismatch(FerryError):
    """The store's schema revision is not this ferry's: an older one (`ferry migrate`) or a newer one."""

    status_code = 503


@dataclass(frozen=True)
class Migration:
    """What ``migrate`` found and did."""

    store: str
    """The store's URL, without its password."""
    before: str | None
    """The revision it had; None for a new store (no tables)."""
    head: str
    steps: tuple[tuple[str, str], ...]
    """The revisions applied (or, in a dry run, to apply), oldest first, each with its one-line description."""
    applied: bool


def config() -> Config:
    """Alembic's configuration for the store's scripts (no alembic.ini: they live in this package)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "ferry:migrations")
    return cfg


@cache
def scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config())


def current(conn: Connection) -> str | None:
    """The store's schema revision: its stamp, the baseline for one made before revisions, None when empty."""
    return _read(conn)[0]


def _read(conn: Connection) -> tuple[str | None, bool]:
    """The store's schema revision (see ``current``) and whether it is stamped (has ``alembic_version``)."""
    from sqlalchemy import inspect, text

    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        stamps = sorted(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())
        if len(stamps) > 1:
            raise SchemaMismatch(
                f"the store at {shown(conn.engine)} has several schema revisions ({', '.join(stamps)}): "
                "ferry keeps one line of revisions, so a newer ferry or a hand-made change made them; upgrade ferry"
            )
        if stamps:
            return stamps[0], True
    return (BASELINE if "services" in tables else None), False


def shown(engine: Engine) -> str:
    """The store's URL as it may be printed: without its password."""
    return engine.url.render_as_string(hide_password=True)


# --- on first use ---------------------------------------------------------------------------------

_ready: set[str] = set()
"""The stores (by full URL) this process found at head: checked once per process and URL."""
_ready_lock = threading.Lock()
_alembic_lock = threading.Lock()
"""Alembic's ``context`` and ``op`` are one per process: one thread runs scripts at a time."""


def ensure(engine: Engine) -> None:
    """Make the store ready for this ferry or refuse it (see the module's docstring); once per process and URL."""
    from ferry.db import retry_on_conflict

    key = engine.url.render_as_string(hide_password=False)
    if key in _ready:
        return
    with _ready_lock:
        if key in _ready:
            return
        retry_on_conflict(lambda: _ensure(engine))
        if engine.url.get_backend_name() != "sqlite" or engine.url.database not in (None, "", ":memory:"):
            _ready.add(key)  # every in-memory SQLite engine is a database of its own


def ensure_on_first_connect(engine: Engine, checker: Callable[[], Engine]) -> None:
    """``ensure`` when ``engine`` first reaches its database (made without connecting: the store may be down).

    Until the check passes, every new connection runs it again and fails with its error: a server started
    before `ferry migrate` serves once it has run. The check runs on ``checker()``, an engine of its own
    (the pool holds a lock during its first-connect hook that a second checkout from it would wait on).
    """
    from sqlalchemy import event

    key = engine.url.render_as_string(hide_password=False)

    def first_connect(_dbapi_conn: object, _record: object) -> None:
        if key in _ready:
            return
        own = checker()
        try:
            ensure(own)
        finally:
            own.dispose()

    event.listen(engine, "first_connect", first_connect)


def _ensure(engine: Engine) -> None:
    with engine.connect() as conn:
        found, stamped = _read(conn)
    if found == HEAD:
        return
    _refuse_unknown(engine, found)
    if found is not None and engine.dialect.name != "sqlite":
        before = "" if stamped else " (made before ferry kept schema revisions)"
        raise SchemaMismatch(
            f"the store at {shown(engine)} has schema revision {found}{before}; this ferry needs {HEAD}: "
            "run `ferry migrate` once (stop old servers first)"
        )
    with _locked(engine) as conn:  # a new store, or an old SQLite one: upgraded by whoever gets the lock first
        found = current(conn)
        if found == HEAD:
            return
        _refuse_unknown(engine, found)
        _upgrade(conn)
    if found is not None:
        log.warning("upgraded the store at %s from schema revision %s to %s", shown(engine), found, HEAD)


def _refuse_unknown(engine: Engine, found: str | None) -> None:
    if found is None or found in {script.revision for script in scripts().walk_revisions()}:
        return
    from ferry import __version__

    raise SchemaMismatch(
        f"the store at {shown(engine)} has schema revision {found}, which this ferry ({__version__}, at "
        f"{HEAD}) does not know: a newer ferry made it; upgrade ferry"
    )


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A transaction holding the store's schema lock: PostgreSQL's advisory lock, SQLite's write lock."""
    from sqlalchemy import func, select

    from ferry.db import SCHEMA_LOCK

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK)))
        elif conn.dialect.name == "sqlite":  # pysqlite would begin only at the first INSERT, and not at all for DDL
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


def _upgrade(conn: Connection) -> None:
    """Run the scripts from the store's revision to head on ``conn``, inside its transaction."""
    from alembic import command

    cfg = config()
    cfg.attributes["connection"] = conn
    with _alembic_lock:
        command.upgrade(cfg, "head")


def _steps(found: str | None) -> tuple[tuple[str, str], ...]:
    """The revisions after ``found`` up to head, oldest first; every one for a new store."""
    newest_first = scripts().iterate_revisions("heads", found or "base")
    return tuple((s.revision, s.doc.splitlines()[0] if s.doc else "") for s in reversed(list(newest_first)))


# --- `ferry migrate` ------------------------------------------------------------------------------


def migrate(engine: Engine, dry_run: bool = False) -> Migration:
    """Upgrade the store to this ferry's head (any database; the way to upgrade a PostgreSQL store).

    Under the schema lock, in one transaction: a failing script leaves the store as it was (on SQLite and
    PostgreSQL, whose DDL is transactional). ``dry_run`` reads the revision and changes nothing.
    """
    context = engine.connect() if dry_run else _locked(engine)
    with context as conn:
        found = current(conn)
        _refuse_unknown(engine, found)
        steps = _steps(found) if found != HEAD else ()
        if steps and not dry_run:
            _upgrade(conn)
        if dry_run:
            conn.rollback()
    if not dry_run:
        _ready.add(engine.url.render_as_string(hide_password=False))
    return Migration(shown(engine), found, HEAD, steps, applied=bool(steps) and not dry_run)
