"""ModelRegistry: upload, register, list, get, publish, tag and remove models."""

from __future__ import annotations

import builtins
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine

from ferry.db import artifact_in_use, lock_artifact, models, retry_on_conflict
from ferry.errors import InvalidInput, NotFound
from ferry.registry.artifacts import ArtifactRef, ArtifactStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRecord:
    """One immutable model in the registry; only ``published`` and ``tags`` change after upload."""

    id: str
    name: str
    project: str
    framework: str
    tags: list[str]
    published: bool
    url: str
    sha256: str
    size: int
    filename: str
    is_dir: bool
    created_at: float
    updated_at: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def artifact(self) -> ArtifactRef:
        return ArtifactRef(url=self.url, sha256=self.sha256, size=self.size, filename=self.filename, is_dir=self.is_dir)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelRegistry:
    """Model records in the store; their bytes in an ArtifactStore."""

    def __init__(self, sql: Engine, artifacts: ArtifactStore) -> None:
        self.sql = sql
        self.artifacts = artifacts

    def upload(
        self,
        name: str,
        path: str | Path | None = None,
        url: str | None = None,
        project: str = "",
        framework: str = "",
        tags: list[str] | None = None,
        publish: bool = False,
        destination: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Store a local file or folder (``path``) or record a remote one (``url``) as a new model."""
        if bool(path) == bool(url):
            raise InvalidInput("give exactly one of --path (a local file or folder) or --url (a remote file)")
        if not name.strip():
            raise InvalidInput("a model needs a non-empty --name")
        if url:
            ref = self.artifacts.register(str(url))
            return self.register(ref, name, project, framework, tags, publish, {**(metadata or {}), "external": True})
        assert path is not None  # exactly one of path and url, and not url
        stored = self.artifacts.store(path, destination)
        record = _new_record(stored.ref, name, project, framework, tags, publish, metadata)
        try:
            self._insert(record, restore=lambda: self.artifacts.store(path, destination))
        except BaseException:
            if stored.created:  # only what this upload wrote, and only while nothing refers to it
                self._clean_up(stored.ref)
            raise
        return record

    def register(
        self,
        ref: ArtifactRef,
        name: str,
        project: str = "",
        framework: str = "",
        tags: list[str] | None = None,
        publish: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Record an artifact that is already stored as a new model."""
        record = _new_record(ref, name, project, framework, tags, publish, metadata)
        self._insert(record)
        return record

    def _insert(self, record: ModelRecord, restore: Callable[[], object] | None = None) -> None:
        with self.sql.begin() as conn:
            lock_artifact(conn, record.url)
            conn.execute(insert(models).values(**record.to_dict()))
            # A concurrent remove may have deleted the shared object after we found it stored and
            # before this row existed; under the lock, a missing object is written again.
            if restore is not None and not self.artifacts.exists(record.artifact):
                restore()

    def get(self, model_id: str) -> ModelRecord:
        with self.sql.connect() as conn:
            row = conn.execute(select(models).where(models.c.id == model_id)).mappings().first()
        if row is None:
            raise _no_model(model_id)
        return ModelRecord(**row)

    def list(
        self,
        name: str | None = None,
        project: str | None = None,
        tags: list[str] | None = None,
        published: bool = False,
    ) -> list[ModelRecord]:
        """Models matching exactly ``name``/``project``, carrying every tag in ``tags``; newest first."""
        query = select(models).order_by(models.c.created_at.desc(), models.c.id)
        if name is not None:
            query = query.where(models.c.name == name)
        if project is not None:
            query = query.where(models.c.project == project)
        if published:
            query = query.where(models.c.published.is_(True))
        with self.sql.connect() as conn:
            rows = conn.execute(query).mappings().all()
        wanted = set(tags or [])
        return [ModelRecord(**row) for row in rows if wanted <= set(row["tags"])]

    def newest(
        self, name: str | None, project: str | None, tags: builtins.list[str] | None = None, published: bool = False
    ) -> ModelRecord:
        """The newest model matching the query, or NotFound describing the query."""
        found = self.list(name=name, project=project, tags=tags, published=published)
        if not found:
            what = ", ".join(
                f"{k}={v!r}"
                for k, v in (("name", name), ("project", project), ("tags", tags), ("published", published))
                if v
            )
            raise NotFound(f"no model matches {what}: `ferry model list` shows the registry")
        return found[0]

    def tag(self, model_id: str, tags: builtins.list[str]) -> ModelRecord:
        """Add ``tags`` to the model's tags; tags added at the same time by others are kept."""
        return self._update(model_id, lambda row: {"tags": sorted(set(row["tags"]) | set(tags))})

    def untag(self, model_id: str, tags: builtins.list[str]) -> ModelRecord:
        """Remove ``tags`` from the model's tags (those it does not carry are ignored)."""
        return self._update(model_id, lambda row: {"tags": sorted(set(row["tags"]) - set(tags))})

    def publish(self, model_id: str) -> ModelRecord:
        return self._update(model_id, lambda _row: {"published": True})

    def remove(self, model_id: str) -> ModelRecord:
        """Delete the record; the stored bytes stay while anything else refers to them (or ferry does not own them)."""
        record = self.get(model_id)
        with self.sql.begin() as conn:
            lock_artifact(conn, record.url)
            conn.execute(delete(models).where(models.c.id == model_id))
        # Only after the row is gone for good: a failure from here on leaves bytes behind, never loses them.
        if not record.metadata.get("external"):
            self._delete_object_if_unused(record.artifact)
        return record

    def _delete_object_if_unused(self, ref: ArtifactRef) -> None:
        with self.sql.begin() as conn:
            lock_artifact(conn, ref.url)
            if not artifact_in_use(conn, ref.url):
                self.artifacts.remove(ref)

    def _clean_up(self, ref: ArtifactRef) -> None:
        try:
            self._delete_object_if_unused(ref)
        except Exception:  # the upload's own error is the one to surface; this is cleanup
            log.warning("could not clean up %s after a failed upload", ref.url, exc_info=True)

    def _update(self, model_id: str, change: Callable[[Any], dict[str, Any]]) -> ModelRecord:
        return retry_on_conflict(lambda: self._update_once(model_id, change))

    def _update_once(self, model_id: str, change: Callable[[Any], dict[str, Any]]) -> ModelRecord:
        where = models.c.id == model_id
        with self.sql.begin() as conn:
            # Write first: it locks the row (PostgreSQL) or the database (SQLite) before the read, so two
            # read-modify-writes at once run one after the other and neither loses the other's change.
            if conn.execute(update(models).where(where).values(updated_at=time.time())).rowcount == 0:
                raise _no_model(model_id)
            row = conn.execute(select(models).where(where)).mappings().one()
            conn.execute(update(models).where(where).values(**change(row)))
            return ModelRecord(**conn.execute(select(models).where(where)).mappings().one())


def _new_record(
    ref: ArtifactRef,
    name: str,
    project: str,
    framework: str,
    tags: list[str] | None,
    publish: bool,
    metadata: dict[str, Any] | None,
) -> ModelRecord:
    now = time.time()
    return ModelRecord(
        id=uuid.uuid4().hex,
        name=name,
        project=project or "",
        framework=framework or "",
        tags=sorted(set(tags or [])),
        published=publish,
        url=ref.url,
        sha256=ref.sha256,
        size=ref.size,
        filename=ref.filename,
        is_dir=ref.is_dir,
        created_at=now,
        updated_at=now,
        metadata=metadata or {},
    )


def _no_model(model_id: str) -> NotFound:
    return NotFound(f"no model with id {model_id!r}: `ferry model list` shows the registry")
