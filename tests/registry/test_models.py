"""ModelRegistry on SQLite and PostgreSQL: upload, query, publish, tag, remove."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ferry.control.store import Store
from ferry.errors import InvalidInput, NotFound
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry


@pytest.fixture
def registry(store_url: str, tmp_path: Path) -> ModelRegistry:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"), tmp_path / "cache", progress=False)
    return ModelRegistry(Store.open(store_url).engine, artifacts)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(b"model bytes" * 100)
    return path


def test_upload_records_checksum_and_fetch_returns_the_bytes(registry: ModelRegistry, model_file: Path):
    record = registry.upload("m", path=model_file, project="p", framework="sklearn", tags=["b", "a"])
    assert record.size == model_file.stat().st_size and len(record.sha256) == 64
    assert record.tags == ["a", "b"] and not record.published
    again = registry.get(record.id)
    assert again == record
    assert registry.artifacts.fetch(again.artifact).read_bytes() == model_file.read_bytes()


def test_newest_matches_name_project_tags_and_published(registry: ModelRegistry, model_file: Path):
    old = registry.upload("m", path=model_file, project="p", tags=["prod"], publish=True)
    time.sleep(0.01)
    new = registry.upload("m", path=model_file, project="p")
    registry.upload("m-other", path=model_file, project="p")
    assert registry.newest("m", "p").id == new.id
    assert registry.newest("m", "p", published=True).id == old.id
    assert registry.newest("m", "p", tags=["prod"]).id == old.id
    assert [m.id for m in registry.list(name="m", project="p")] == [new.id, old.id]
    with pytest.raises(NotFound, match="name='m', project='q'"):
        registry.newest("m", "q")


def test_publish_and_tag_change_only_those_fields(registry: ModelRegistry, model_file: Path):
    record = registry.upload("m", path=model_file, tags=["x"])
    published = registry.publish(record.id)
    tagged = registry.tag(record.id, ["y", "x"])
    assert published.published and tagged.tags == ["x", "y"]
    assert tagged.sha256 == record.sha256 and tagged.updated_at >= record.updated_at


def test_remove_deletes_record_and_unshared_bytes(registry: ModelRegistry, model_file: Path):
    a = registry.upload("a", path=model_file)
    b = registry.upload("b", path=model_file)  # same bytes, same object
    registry.remove(a.id)
    with pytest.raises(NotFound):
        registry.get(a.id)
    registry.artifacts.fetch(b.artifact)  # still there
    registry.remove(b.id)
    fs_path = Path(b.url.removeprefix("file://"))
    assert not fs_path.exists()


def test_url_registration_is_never_deleted_by_ferry(registry: ModelRegistry, model_file: Path):
    record = registry.upload("remote", url=str(model_file))
    assert record.metadata == {"external": True}
    registry.remove(record.id)
    assert model_file.exists()


def test_bad_uploads_leave_nothing(registry: ModelRegistry, tmp_path: Path, model_file: Path):
    with pytest.raises(NotFound, match="missing.bin"):
        registry.upload("m", path=tmp_path / "missing.bin")
    with pytest.raises(InvalidInput, match="exactly one of --path"):
        registry.upload("m", path=model_file, url="file:///x")
    assert registry.list() == []
