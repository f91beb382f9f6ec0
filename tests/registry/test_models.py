"""ModelRegistry on SQLite and PostgreSQL: upload, query, publish, tag, remove."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import StatementError

from ferry.control.spec import EndpointSpec
from ferry.control.store import Store
from ferry.errors import InvalidInput, NotFound
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry


@pytest.fixture
def registry(store_url: str, tmp_path: Path) -> ModelRegistry:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"), tmp_path / "cache", progress=False)
    return ModelRegistry(Store.open(store_url).sql, artifacts)


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


UNSTORABLE = (TypeError, StatementError)  # how each driver refuses metadata it cannot write as JSON


def _object_path(record) -> Path:
    return Path(record.url.removeprefix("file://"))


def test_failed_record_keeps_bytes_another_model_shares(registry: ModelRegistry, model_file: Path, tmp_path: Path):
    first = registry.upload("first", path=model_file)
    with pytest.raises(UNSTORABLE, match="not JSON serializable"):  # the model row cannot be written
        registry.upload("second", path=model_file, metadata={"unstorable": object()})
    assert [m.id for m in registry.list()] == [first.id]
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)  # fetch from the store, not the local cache
    assert registry.artifacts.fetch(first.artifact).read_bytes() == model_file.read_bytes()


def test_failed_record_of_new_bytes_leaves_no_object(registry: ModelRegistry, tmp_path: Path):
    fresh = tmp_path / "fresh.pkl"
    fresh.write_bytes(b"never stored before")
    with pytest.raises(UNSTORABLE, match="not JSON serializable"):
        registry.upload("m", path=fresh, metadata={"unstorable": object()})
    assert registry.list() == []
    assert [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()] == []


def test_remove_keeps_bytes_a_revision_still_refers_to(store_url: str, registry: ModelRegistry, tmp_path: Path):
    code = tmp_path / "preprocess.py"
    code.write_text("class Preprocess:\n    pass\n")
    model = registry.upload("code-as-model", path=code)  # the same bytes and name as an endpoint's code
    store = Store(registry.sql)
    svc = store.create_service("s")
    spec = EndpointSpec(name="e", engine="custom", preprocess=registry.artifacts.put(code))
    store.commit(svc.id, lambda c: (c.model_copy(update={"endpoints": {"e": spec}}), "add e"))
    registry.remove(model.id)
    assert _object_path(model).exists()


def test_two_tag_calls_at_once_both_land(store_url: str, registry: ModelRegistry, model_file: Path):
    """Four writers, each with its own connections, add ten tags each to one model: all forty stay."""
    model = registry.upload("m", path=model_file, tags=["base"])
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def tagger(prefix: str) -> None:
        own = ModelRegistry(Store.open(store_url).sql, registry.artifacts)
        start.wait()
        try:
            for i in range(10):
                own.tag(model.id, [f"{prefix}{i}"])
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=tagger, args=(p,)) for p in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(registry.get(model.id).tags) == {"base"} | {f"{p}{i}" for p in "abcd" for i in range(10)}


def test_remove_racing_an_upload_of_the_same_bytes_never_loses_them(
    store_url: str, registry: ModelRegistry, model_file: Path
):
    """One writer deletes the only model holding some bytes while another uploads the same bytes."""
    other = ModelRegistry(Store.open(store_url).sql, registry.artifacts)

    def upload(start: threading.Barrier, uploaded: list) -> None:
        start.wait()
        uploaded.append(other.upload("kept", path=model_file))

    for _ in range(10):
        doomed = registry.upload("doomed", path=model_file)
        start, uploaded = threading.Barrier(2), []
        thread = threading.Thread(target=upload, args=(start, uploaded))
        thread.start()
        start.wait()
        registry.remove(doomed.id)
        thread.join()
        (kept,) = uploaded
        assert _object_path(kept).stat().st_size == kept.size
        registry.remove(kept.id)
    assert not _object_path(kept).exists()
