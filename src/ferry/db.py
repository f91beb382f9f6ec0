"""The store's schema (every table, one MetaData) and the SQL engine; control/ and registry/ query it."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

metadata = MetaData()
T = TypeVar("T")
SCHEMA_LOCK = 0x66657272  # "ferr": the advisory lock key held while the schema is created or upgraded

services = Table(
    "services",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False, index=True),
    Column("project", String(255), nullable=False, default=""),
    Column("tags", JSON, nullable=False, default=list),
    Column("created_at", Float, nullable=False),
)

revisions = Table(
    "revisions",
    metadata,
    Column("service_id", String(64), ForeignKey("services.id", ondelete="CASCADE"), primary_key=True),
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("created_at", Float, nullable=False),
    Column("summary", Text, nullable=False),
    Column("config", Text, nullable=False),  # ServiceConfig as JSON, validated on read
    Column("author", String(255), nullable=True),  # who made the change; NULL before it was recorded
)

instances = Table(
    "instances",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("service_id", String(64), ForeignKey("services.id", ondelete="CASCADE"), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False, index=True),
    Column("revision", Integer, nullable=True),
    Column("state", JSON, nullable=False, default=dict),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(64), nullable=True, index=True),
    Column("time", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("data", JSON, nullable=False, default=dict),
)

models = Table(
    "models",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("project", String(255), nullable=False, default=""),
    Column("framework", String(64), nullable=False, default=""),
    Column("tags", JSON, nullable=False, default=list),
    Column("published", Boolean, nullable=False, default=False),
    Column("url", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("filename", String(255), nullable=False),
    Column("is_dir", Boolean, nullable=False, default=False),
    Column("metadata", JSON, nullable=False, default=dict),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index("models_by_name", models.c.project, models.c.name, models.c.created_at)


def make_sql_engine(url: str, create_tables: bool = True) -> Engine:
    """Create an engine for ``url`` and make the store's schema this ferry's (``ferry.migrations.ensure``).

    A new store is created, an older SQLite one upgraded in place; an older PostgreSQL store, or one a newer
    ferry made, is refused (``SchemaMismatch``). Once per process and URL. ``create_tables=False`` does not
    connect (a serving process may start while the store is down): the check runs at the first connection.
    """
    from ferry import migrations

    engine = new_engine(url)
    if create_tables:
        migrations.ensure(engine)
    else:
        migrations.ensure_on_first_connect(engine, lambda: new_engine(url, poolclass=NullPool))
    return engine


def new_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` that checks nothing; SQLite files get their folder, WAL mode and a busy timeout."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


SQLITE_BUSY, SQLITE_LOCKED = 5, 6
SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE = 1555, 2067


@cache
def _postgres_conflicts() -> tuple[type[BaseException], ...]:
    try:
        from psycopg import errors
    except ImportError:  # the postgres extra is not installed: no PostgreSQL errors can occur
        return ()
    return (errors.UniqueViolation, errors.SerializationFailure, errors.DeadlockDetected)


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` means a concurrent writer won the race, so running the transaction again can succeed.

    Decided by the driver's error class and code, never by message text: SQLite busy, locked or a
    unique clash (pysqlite reads outside the write transaction), PostgreSQL unique violation,
    serialization failure or deadlock.
    """
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    if isinstance(orig, (sqlite3.OperationalError, sqlite3.IntegrityError)):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is None:  # Python 3.10's sqlite3 carries no codes: take its class alone
            return True
        if isinstance(orig, sqlite3.IntegrityError):
            return code in (SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE)
        return code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)  # the low byte: BUSY_SNAPSHOT is a BUSY
    return isinstance(orig, _postgres_conflicts())


def retry_on_conflict(fn: Callable[[], T], attempts: int = 50) -> T:
    """Run ``fn`` again when a concurrent writer won the race (see ``is_conflict``); other errors pass."""
    for attempt in range(attempts):
        try:
            return fn()
        except DBAPIError as exc:
            if not is_conflict(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.005 * (attempt + 1))
    raise AssertionError("unreachable")


def lock_artifact(conn: Connection, url: str) -> None:
    """Hold, until ``conn``'s transaction ends, the lock that orders recording and deleting objects at ``url``."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(url))))
    else:  # SQLite has one writer at a time: a write that changes nothing takes that lock
        conn.execute(delete(models).where(models.c.id.is_(None)))


def artifact_in_use(conn: Connection, url: str) -> bool:
    """Whether a model, or any revision of any service (its preprocess code), refers to the object at ``url``."""
    model = conn.execute(select(models.c.id).where(models.c.url == url).limit(1)).first()
    if model is not None:
        return True
    needle = json.dumps(url, ensure_ascii=False)  # as the URL appears, quoted, inside the config JSON
    query = select(revisions.c.number).where(revisions.c.config.contains(needle, autoescape=True)).limit(1)
    return conn.execute(query).first() is not None
