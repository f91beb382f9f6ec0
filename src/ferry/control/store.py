"""Store: services, their immutable revisions, instances and events, over SQLAlchemy Core."""

from __future__ import annotations

import getpass
import os
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine

from ferry.control.spec import STORED, ServiceConfig
from ferry.db import events, instances, make_sql_engine, retry_on_conflict, revisions, services
from ferry.errors import Conflict, InvalidInput, NotFound

Change = Callable[[ServiceConfig], tuple[ServiceConfig, str]]
"""Takes the head config, returns the new config and a one-line summary of what changed."""

LIVE_INTERVALS = 5
"""An instance heard from within this many of its heartbeat intervals is live."""
DEAD_INTERVALS = 30
"""One silent for this many (and at least ``DEAD_AFTER_MIN_S``) is dead, and deleted from the store."""
DEAD_AFTER_MIN_S = 10.0


@dataclass(frozen=True)
class ServiceRecord:
    id: str
    name: str
    project: str
    tags: list[str]
    created_at: float


@dataclass(frozen=True)
class Revision:
    service_id: str
    number: int
    created_at: float
    summary: str
    config: ServiceConfig
    author: str | None = None
    """Who made the change (the OS user of a command, the console's writer, "auto-update"); None before 0002."""


AUTHOR: ContextVar[str | None] = ContextVar("ferry_revision_author", default=None)
"""Who the revisions committed in this context are by, where it is not the OS user (the console sets it)."""


def author_of(given: str | None = None) -> str:
    """A revision's author: ``given``, else the context's (``AUTHOR``), else the OS user; cut to the column's 255."""
    return (given or AUTHOR.get() or os_user())[:255]


def os_user() -> str:
    """The OS user running this process, as a revision's default author."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"


@dataclass(frozen=True)
class InstanceRecord:
    id: str
    service_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    revision: int | None
    state: dict[str, Any] = field(default_factory=dict)

    def is_live(self, now: float | None = None) -> bool:
        """Heard from within five of its own heartbeat intervals."""
        return self._silent_for(now) <= max(1.0, LIVE_INTERVALS * self._interval)

    def is_dead(self, now: float | None = None) -> bool:
        """Silent for so long (``DEAD_INTERVALS`` of its heartbeat intervals) that the store forgets it."""
        return self._silent_for(now) > max(DEAD_AFTER_MIN_S, DEAD_INTERVALS * self._interval)

    @property
    def _interval(self) -> float:
        return float(self.state.get("heartbeat_interval", 2.0))

    def _silent_for(self, now: float | None) -> float:
        return (now or time.time()) - self.heartbeat_at


class Store:
    """The control plane's durable state. Safe to share between threads and processes."""

    def __init__(self, sql: Engine) -> None:
        self.sql = sql
        """The SQL engine (SQLAlchemy's connection pool), not a model engine."""

    @classmethod
    def open(cls, url: str) -> Store:
        return cls(make_sql_engine(url))

    # services -------------------------------------------------------------------------------------

    def create_service(self, name: str, project: str = "", tags: list[str] | None = None) -> ServiceRecord:
        """Create a service with an empty config as revision 1."""
        if not name.strip():
            raise InvalidInput("a service needs a non-empty --name")
        record = ServiceRecord(uuid.uuid4().hex, name, project or "", list(tags or []), time.time())
        with self.sql.begin() as conn:
            conn.execute(insert(services).values(**record.__dict__))
            conn.execute(
                insert(revisions).values(
                    service_id=record.id,
                    number=1,
                    created_at=record.created_at,
                    summary=f"service {name!r} created",
                    config=ServiceConfig().model_dump_json(),
                    author=author_of(),
                )
            )
        return record

    def list_services(self) -> list[ServiceRecord]:
        with self.sql.connect() as conn:
            rows = conn.execute(select(services).order_by(services.c.created_at)).mappings().all()
        return [ServiceRecord(**row) for row in rows]

    def get_service(self, service_id: str) -> ServiceRecord:
        with self.sql.connect() as conn:
            row = conn.execute(select(services).where(services.c.id == service_id)).mappings().first()
        if row is None:
            raise NotFound(f"no service with id {service_id!r}: `ferry list` shows the services")
        return ServiceRecord(**row)

    def resolve_service(self, ident: str | None) -> ServiceRecord:
        """Find a service by id, or by name when unambiguous; with no ident, the only service."""
        if ident:
            try:
                return self.get_service(ident)
            except NotFound:
                matches = [s for s in self.list_services() if s.name == ident]
                if len(matches) == 1:
                    return matches[0]
                if matches:
                    raise _ambiguous(f"the name {ident!r}", matches) from None
                raise
        every = self.list_services()
        if len(every) == 1:
            return every[0]
        if not every:
            raise NotFound('no service exists yet: create one with `ferry create --name "my service"`')
        raise _ambiguous("no --id was given and", every)

    # revisions ------------------------------------------------------------------------------------

    def head(self, service_id: str) -> int:
        """The newest revision number: the one instances should serve."""
        with self.sql.connect() as conn:
            number = conn.execute(
                select(func.max(revisions.c.number)).where(revisions.c.service_id == service_id)
            ).scalar()
        if number is None:
            raise NotFound(f"no service with id {service_id!r}: `ferry list` shows the services")
        return int(number)

    def get_revision(self, service_id: str, number: int | None = None) -> Revision:
        """Revision ``number`` of the service, or its head when ``number`` is None."""
        query = select(revisions).where(revisions.c.service_id == service_id)
        if number is None:
            query = query.order_by(revisions.c.number.desc()).limit(1)
        else:
            query = query.where(revisions.c.number == number)
        with self.sql.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            self.get_service(service_id)
            raise NotFound(
                f"service {service_id} has no revision {number}: `ferry --id {service_id} history` lists them"
            )
        return _revision(row)

    def list_revisions(self, service_id: str) -> list[Revision]:
        self.get_service(service_id)
        with self.sql.connect() as conn:
            rows = conn.execute(
                select(revisions).where(revisions.c.service_id == service_id).order_by(revisions.c.number)
            ).mappings()
            return [_revision(row) for row in rows]

    def endpoints_serving(self, model_id: str) -> dict[str, list[str]]:
        """The endpoints, per service id, that the head revision of each service serves ``model_id`` at."""
        head = (
            select(revisions.c.service_id, func.max(revisions.c.number).label("number"))
            .group_by(revisions.c.service_id)
            .subquery()
        )
        query = (
            select(revisions.c.service_id, revisions.c.config)
            .join(head, (revisions.c.service_id == head.c.service_id) & (revisions.c.number == head.c.number))
            .where(revisions.c.config.contains(model_id, autoescape=True))
        )
        with self.sql.connect() as conn:
            rows = conn.execute(query).all()
        serving = {}
        for service_id, text in rows:
            endpoints = ServiceConfig.model_validate_json(text, context=STORED).endpoints
            keys = sorted(key for key, spec in endpoints.items() if spec.model_id == model_id)
            if keys:
                serving[service_id] = keys
        return serving

    def commit(self, service_id: str, change: Change, author: str | None = None) -> Revision:
        """Apply ``change`` to the head config and store the result as the next revision.

        Two writers racing for the same number: the loser's insert fails on the primary key and it
        re-reads the new head and applies its change again, so neither edit is lost. A change that
        returns the very config it was given writes nothing; the head revision is returned.
        """
        self.get_service(service_id)
        author = author_of(author)
        return retry_on_conflict(lambda: self._commit_once(service_id, change, author))

    def _commit_once(self, service_id: str, change: Change, author: str) -> Revision:
        with self.sql.begin() as conn:
            row = (
                conn.execute(
                    select(revisions)
                    .where(revisions.c.service_id == service_id)
                    .order_by(revisions.c.number.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            assert row is not None  # a service is created with its revision 1
            head = ServiceConfig.model_validate_json(row["config"], context=STORED)
            config, summary = change(head)
            if config is head:  # the change returned the head itself: nothing to write
                return _revision(row)
            revision = Revision(service_id, row["number"] + 1, time.time(), summary, config, author)
            conn.execute(
                insert(revisions).values(
                    service_id=service_id,
                    number=revision.number,
                    created_at=revision.created_at,
                    summary=summary,
                    config=config.model_dump_json(exclude_defaults=True),
                    author=revision.author,
                )
            )
        return revision

    # instances ------------------------------------------------------------------------------------

    def register_instance(self, service_id: str, host: str, pid: int) -> str:
        """Add a running instance of the service, forgetting the service's dead ones."""
        self.list_instances(service_id)
        instance_id = uuid.uuid4().hex
        now = time.time()
        with self.sql.begin() as conn:
            conn.execute(
                insert(instances).values(
                    id=instance_id,
                    service_id=service_id,
                    host=host,
                    pid=pid,
                    started_at=now,
                    heartbeat_at=now,
                    revision=None,
                    state={},
                )
            )
        return instance_id

    def heartbeat(self, instance_id: str, revision: int | None, state: dict[str, Any]) -> bool:
        """Record a heartbeat; False when the instance is unknown (pruned as dead): it should register again."""
        with self.sql.begin() as conn:
            result = conn.execute(
                update(instances)
                .where(instances.c.id == instance_id)
                .values(heartbeat_at=time.time(), revision=revision, state=state)
            )
        return result.rowcount > 0

    def remove_instance(self, instance_id: str) -> None:
        with self.sql.begin() as conn:
            conn.execute(instances.delete().where(instances.c.id == instance_id))

    def list_instances(self, service_id: str, alive_within: float | None = None) -> list[InstanceRecord]:
        """Instances of the service: live ones only (see ``is_live``) unless ``alive_within`` is given.

        Dead ones (see ``is_dead``) are deleted on the way: a crashed instance never deregisters itself.
        """
        query = select(instances).where(instances.c.service_id == service_id)
        with self.sql.connect() as conn:
            rows = conn.execute(query.order_by(instances.c.started_at)).mappings().all()
        now = time.time()
        found = [InstanceRecord(**row) for row in rows]
        self._prune([i for i in found if i.is_dead(now)])
        if alive_within is None:
            return [i for i in found if i.is_live(now)]
        return [i for i in found if not i.is_dead(now) and now - i.heartbeat_at <= alive_within]

    def _prune(self, dead: list[InstanceRecord]) -> None:
        if not dead:
            return
        with self.sql.begin() as conn:
            for instance in dead:  # unless it spoke up since we read it
                conn.execute(
                    instances.delete().where(
                        instances.c.id == instance.id, instances.c.heartbeat_at <= instance.heartbeat_at
                    )
                )

    # events ---------------------------------------------------------------------------------------

    def add_event(self, kind: str, message: str, service_id: str | None = None, **data: Any) -> None:
        with self.sql.begin() as conn:
            conn.execute(
                insert(events).values(service_id=service_id, time=time.time(), kind=kind, message=message, data=data)
            )

    def list_events(self, service_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(events).order_by(events.c.id.desc()).limit(limit)
        if service_id is not None:
            query = query.where(events.c.service_id == service_id)
        with self.sql.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]


def _revision(row: Any) -> Revision:
    config = ServiceConfig.model_validate_json(row["config"], context=STORED)
    return Revision(row["service_id"], row["number"], row["created_at"], row["summary"], config, row.get("author"))


def _ambiguous(prefix: str, matches: list[ServiceRecord]) -> Conflict:
    listing = ", ".join(f"{s.id} ({s.name})" for s in matches)
    return Conflict(f"{prefix} several services match; pass --id with one of: {listing}")
