"""ArtifactStore against real local folders and a real S3 protocol server (moto)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import fsspec
import pytest
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from ferry.errors import EngineError, NotFound
from ferry.registry.artifacts import ArtifactRef, ArtifactStore


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _model_folder(root: Path) -> Path:
    folder = root / "bert"
    _write(folder / "config.json", b'{"layers": 2}')
    _write(folder / "weights" / "part-0.bin", os.urandom(2048))
    _write(folder / "weights" / "nested" / "part-1.bin", os.urandom(1024))
    (folder / "empty").mkdir()
    return folder


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def _stored_objects(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_file_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    ref = store.put(_write(tmp_path / "model.pkl", data))

    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert (ref.size, ref.filename, ref.is_dir) == (len(data), "model.pkl", False)
    local = store.fetch(ref)
    assert local == store.cache_dir / ref.sha256 / "model.pkl"
    assert local.read_bytes() == data


def test_object_is_content_addressed(store: ArtifactStore, tmp_path: Path) -> None:
    ref = store.put(_write(tmp_path / "model.pkl", b"weights"))

    expected = tmp_path / "remote" / ref.sha256[:2] / ref.sha256 / "model.pkl"
    assert _stored_objects(tmp_path / "remote") == [expected]
    assert url_to_fs(ref.url)[1] == expected.as_posix()


def test_folder_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    ref = store.put(folder)

    assert (ref.is_dir, ref.filename) == (True, "bert")
    assert ref.url.endswith(f"/{ref.sha256}/bert.tar")
    stored = Path(url_to_fs(ref.url)[1])
    assert ref.size == stored.stat().st_size
    assert ref.sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
    local = store.fetch(ref)
    assert local == store.cache_dir / ref.sha256 / "bert"
    assert local.is_dir()
    assert _tree(local) == _tree(folder)


def test_a_weights_folder_is_stored_as_a_plain_tar_without_compression(store: ArtifactStore, tmp_path: Path) -> None:
    """Weights do not compress: a multi-GB model folder is not gzipped at upload nor gunzipped at each cache fill."""
    folder = tmp_path / "llm"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(8 << 20))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    ref = store.put(folder)
    stored = Path(url_to_fs(ref.url)[1])
    with tarfile.open(stored, mode="r:") as tar:  # "r:" reads an uncompressed tar only
        assert sorted(tar.getnames()) == ["config.json", "model.safetensors"]
    assert ref.size < (8 << 20) + 16 * 1024  # the bytes plus tar's headers
    assert _tree(store.fetch(ref)) == _tree(folder)


def test_same_folder_packed_twice_has_same_sha256(store: ArtifactStore, tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    first = store.put(folder, destination=str(tmp_path / "a"))
    for path in folder.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    second = store.put(folder, destination=str(tmp_path / "b"))

    assert first.sha256 == second.sha256
    assert first.url != second.url


def test_second_put_of_same_content_does_not_rewrite(store: ArtifactStore, tmp_path: Path) -> None:
    source = _write(tmp_path / "model.pkl", b"weights")
    first = store.put(source)
    stored = Path(url_to_fs(first.url)[1])
    os.utime(stored, (1_000_000, 1_000_000))

    second = store.put(source)

    assert second == first
    assert stored.stat().st_mtime == 1_000_000
    assert _stored_objects(tmp_path / "remote") == [stored]


def test_destination_overrides_root_for_one_upload(store: ArtifactStore, tmp_path: Path) -> None:
    source = _write(tmp_path / "model.pkl", b"weights")
    elsewhere = f"file://{(tmp_path / 'elsewhere').as_posix()}"

    ref = store.put(source, destination=elsewhere)

    assert not (tmp_path / "remote").exists()
    assert _stored_objects(tmp_path / "elsewhere") == [Path(url_to_fs(ref.url)[1])]
    assert store.fetch(ref).read_bytes() == b"weights"


def test_corrupted_object_is_detected_on_fetch(store: ArtifactStore, tmp_path: Path) -> None:
    ref = store.put(_write(tmp_path / "model.pkl", b"weights"))
    store.fetch(ref)
    Path(url_to_fs(ref.url)[1]).write_bytes(b"tampered")
    (store.cache_dir / ref.sha256 / "model.pkl").unlink()

    with pytest.raises(EngineError, match=f"corrupt: expected sha256 {ref.sha256}.*re-upload"):
        store.fetch(ref)

    assert [p.name for p in store.cache_dir.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "interrupt"])
def test_failed_upload_leaves_nothing_behind(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    def broken_mv(self: LocalFileSystem, path1: str, path2: str, **kwargs: object) -> None:
        assert Path(path1).stat().st_size == len(b"weights")
        raise error

    monkeypatch.setattr(LocalFileSystem, "mv", broken_mv)

    with pytest.raises(type(error)):
        store.put(_write(tmp_path / "model.pkl", b"weights"))

    assert _stored_objects(tmp_path / "remote") == []


def test_missing_local_path_is_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.pkl"
    with pytest.raises(NotFound, match=str(missing)):
        store.put(missing)


def test_missing_url_is_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    url = f"file://{(tmp_path / 'nowhere.pkl').as_posix()}"
    with pytest.raises(NotFound, match="nowhere.pkl"):
        store.register(url)
    ref = ArtifactRef(url=url, sha256="0" * 64, size=1, filename="nowhere.pkl")
    with pytest.raises(NotFound, match="nowhere.pkl"):
        store.fetch(ref)


def test_register_existing_file_url(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(5000)
    source = _write(tmp_path / "outside" / "model.onnx", data)
    url = f"file://{source.as_posix()}"

    ref = store.register(url)

    assert ref == ArtifactRef(url=url, sha256=hashlib.sha256(data).hexdigest(), size=5000, filename="model.onnx")
    assert store.fetch(ref).read_bytes() == data
    assert not (tmp_path / "remote").exists()


def test_remove_deletes_object_and_tolerates_missing(store: ArtifactStore, tmp_path: Path) -> None:
    ref = store.put(_write(tmp_path / "model.pkl", b"weights"))

    store.remove(ref)
    store.remove(ref)

    assert _stored_objects(tmp_path / "remote") == []


@pytest.mark.parametrize("as_folder", [False, True], ids=["file", "folder"])
def test_concurrent_fetches_of_same_artifact(store: ArtifactStore, tmp_path: Path, as_folder: bool) -> None:
    source = _model_folder(tmp_path) if as_folder else _write(tmp_path / "model.pkl", os.urandom(200_000))
    ref = store.put(source)
    start = threading.Barrier(4)
    results: list[Path | BaseException] = []

    def fetch() -> None:
        start.wait()
        try:
            results.append(store.fetch(ref))
        except BaseException as exc:  # surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [store.cache_dir / ref.sha256 / ref.filename] * 4
    fetched = results[0]
    assert isinstance(fetched, Path)
    if as_folder:
        assert _tree(fetched) == _tree(source)
    else:
        assert fetched.read_bytes() == source.read_bytes()
    leftovers = [p.name for p in store.cache_dir.iterdir() if p.name != ref.sha256]
    assert leftovers == []


def test_archive_escaping_its_folder_is_rejected(store: ArtifactStore, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    archive = _write(tmp_path / "evil.tar.gz", buffer.getvalue())
    registered = store.register(str(archive))
    ref = registered.model_copy(update={"is_dir": True, "filename": "evil"})

    with pytest.raises(EngineError, match="unsafe"):
        store.fetch(ref)

    assert not (store.cache_dir / "escaped.txt").exists()
    assert not (store.cache_dir / ref.sha256 / "evil").exists()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    data = b"evil" if kind == tarfile.REGTYPE else b""
    info.size = len(data)
    return info, data


UNSAFE_ARCHIVES = {
    "dot-dot": ([_entry("../escaped.txt")], "'../escaped.txt' points outside the folder"),
    "deep dot-dot": ([_entry("a/b/../../../escaped.txt")], "points outside the folder"),
    "absolute": ([_entry("/tmp/escaped.txt")], "'/tmp/escaped.txt' is an absolute path"),
    "symlink out": ([_entry("link", tarfile.SYMTYPE, "../../etc")], "'link' -> '../../etc' points outside"),
    "absolute symlink": ([_entry("link", tarfile.SYMTYPE, "/etc")], "'link' -> '/etc' is an absolute path"),
    "hardlink out": ([_entry("hard", tarfile.LNKTYPE, "../escaped.txt")], "'hard' -> '../escaped.txt' points"),
    "write through a link": (
        [_entry("inner", tarfile.SYMTYPE, "."), _entry("inner/escaped.txt")],
        "'inner/escaped.txt' lies under the link 'inner'",
    ),
    "device": ([_entry("dev", tarfile.CHRTYPE)], "'dev' is a special file"),
}


@pytest.mark.parametrize("case", UNSAFE_ARCHIVES, ids=list(UNSAFE_ARCHIVES))
def test_archive_entry_leaving_its_folder_is_refused(store: ArtifactStore, tmp_path: Path, case: str) -> None:
    entries, message = UNSAFE_ARCHIVES[case]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data))
    archive = _write(tmp_path / "packed" / "evil.tar.gz", buffer.getvalue())
    ref = store.register(str(archive)).model_copy(update={"is_dir": True, "filename": "evil"})

    with pytest.raises(EngineError, match="unsafe entry, so it was not unpacked") as refused:
        store.fetch(ref)

    assert message in str(refused.value) and "re-upload the folder" in str(refused.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["cache", "packed", "evil.tar.gz", ref.sha256])


def test_links_inside_the_folder_still_unpack(store: ArtifactStore, tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    (folder / "weights" / "latest.bin").symlink_to("nested/part-1.bin")
    ref = store.put(folder)

    fetched = store.fetch(ref)

    assert (fetched / "weights" / "latest.bin").read_bytes() == (
        folder / "weights" / "nested" / "part-1.bin"
    ).read_bytes()


def test_small_transfers_stay_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    noisy = ArtifactStore(str(tmp_path / "remote"), tmp_path / "cache", progress=True)
    noisy.fetch(noisy.put(_write(tmp_path / "model.pkl", b"weights")))

    assert capsys.readouterr().err == ""


def test_s3_round_trip_through_endpoint_env(store: ArtifactStore, tmp_path: Path, s3_bucket: str) -> None:
    data = os.urandom(50_000)
    source = _write(tmp_path / "model.pkl", data)

    ref = store.put(source, destination=f"s3://{s3_bucket}/models")

    sha = hashlib.sha256(data).hexdigest()
    assert ref.url == f"s3://{s3_bucket}/models/{sha[:2]}/{sha}/model.pkl"
    s3 = fsspec.filesystem("s3")
    s3.invalidate_cache()
    assert s3.exists(f"{s3_bucket}/models/{sha[:2]}/{sha}/model.pkl")
    assert s3.find(f"{s3_bucket}/models/.staging") == []
    assert store.fetch(ref).read_bytes() == data


def test_s3_folder_and_register(store: ArtifactStore, tmp_path: Path, s3_bucket: str) -> None:
    folder = _model_folder(tmp_path)
    ref = store.put(folder, destination=f"s3://{s3_bucket}")

    assert store.register(ref.url).sha256 == ref.sha256
    assert _tree(store.fetch(ref)) == _tree(folder)
    store.remove(ref)
    s3 = fsspec.filesystem("s3")
    s3.invalidate_cache()
    assert not s3.exists(ref.url)
