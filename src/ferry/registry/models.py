"""ModelRegistry: upload, register, list, get, publish, tag and remove models."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine

from ferry.db import models
from ferry.errors import InvalidInput, NotFound
from ferry.registry.artifacts import ArtifactRef, ArtifactStore


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

    def __init__(self, engine: Engine, artifacts: ArtifactStore) -> None:
        self.engine = engine
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
        ref = self.artifacts.put(path, destination) if path else self.artifacts.register(str(url))
        metadata = {**(metadata or {}), **({} if path else {"external": True})}
        try:
            return self.register(ref, name, project, framework, tags, publish, metadata)
        except BaseException:
            if path:  # the record failed: do not leave an orphan object behind
                self.artifacts.remove(ref)
            raise

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
        now = time.time()
        record = ModelRecord(
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
        with self.engine.begin() as conn:
            conn.execute(insert(models).values(**record.to_dict()))
        return record

    def get(self, model_id: str) -> ModelRecord:
        with self.engine.connect() as conn:
            row = conn.execute(select(models).where(models.c.id == model_id)).mappings().first()
        if row is None:
            raise NotFound(f"no model with id {model_id!r}: `ferry model list` shows the registry")
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
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        wanted = set(tags or [])
        return [ModelRecord(**row) for row in rows if wanted <= set(row["tags"])]

    def newest(
        self, name: str | None, project: str | None, tags: list[str] | None = None, published: bool = False
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

    def publish(self, model_id: str) -> ModelRecord:
        return self._update(model_id, published=True)

    def tag(self, model_id: str, tags: list[str]) -> ModelRecord:
        """Add ``tags`` to the model's tags."""
        current = self.get(model_id)
        return self._update(model_id, tags=sorted(set(current.tags) | set(tags)))

    def remove(self, model_id: str) -> ModelRecord:
        """Delete the record; the stored bytes stay while another model shares them (or ferry does not own them)."""
        record = self.get(model_id)
        with self.engine.begin() as conn:
            conn.execute(delete(models).where(models.c.id == model_id))
            shared = conn.execute(select(models.c.id).where(models.c.url == record.url).limit(1)).first()
        if shared is None and not record.metadata.get("external"):
            self.artifacts.remove(record.artifact)
        return record

    def _update(self, model_id: str, **values: Any) -> ModelRecord:
        self.get(model_id)
        with self.engine.begin() as conn:
            conn.execute(update(models).where(models.c.id == model_id).values(updated_at=time.time(), **values))
        return self.get(model_id)
