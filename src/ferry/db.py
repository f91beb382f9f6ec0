"""The store's schema (every table, one MetaData) and the SQL engine; control/ and registry/ query it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

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
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

metadata = MetaData()
T = TypeVar("T")

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


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite files get their folder, WAL mode and a busy timeout."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    retry_on_conflict(lambda: _create_tables(engine))
    return engine


def _create_tables(engine: Engine) -> None:
    try:
        metadata.create_all(engine)
    except (OperationalError, ProgrammingError) as exc:
        if "already exists" not in str(exc):  # another process created them between check and create
            raise
        metadata.create_all(engine)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def retry_on_conflict(fn: Callable[[], T], attempts: int = 50) -> T:
    """Run ``fn`` again when a concurrent writer won the race (unique clash, SQLite busy snapshot)."""
    for attempt in range(attempts):
        try:
            return fn()
        except (IntegrityError, OperationalError) as exc:
            transient = isinstance(exc, IntegrityError) or "locked" in str(exc) or "busy" in str(exc)
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(0.005 * (attempt + 1))
    raise AssertionError("unreachable")
