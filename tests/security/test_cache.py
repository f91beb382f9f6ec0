"""The artifact cache is verified where it is used: a cached copy whose bytes changed is never served.

``ArtifactStore.fetch`` trusts a cached copy only while it looks as it did when it was hashed (size, mtime,
ctime, inode: the stamp beside it); a copy that changed is hashed again and fetched again from the source
when its bytes differ, and refused naming the artifact when the source is wrong too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import joblib
import numpy as np
import pytest
from fsspec.core import url_to_fs
from sklearn.linear_model import LogisticRegression

from ferry.errors import EngineError
from ferry.registry import stamps
from ferry.registry.artifacts import ArtifactRef, ArtifactStore
from tests.conftest import Ferry
from tests.server import Server

SKLEARN = Path(__file__).parents[2] / "examples" / "sklearn" / "preprocess.py"


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "remote"), tmp_path / "cache", progress=False)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file ArtifactStore hashes, in order."""
    seen: list[Path] = []
    real = stamps.hash_file

    def counting(path: Path) -> str:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(stamps, "hash_file", counting)
    return seen


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every artifact ArtifactStore downloads, by URL."""
    seen: list[str] = []
    real = ArtifactStore._download

    def counting(self: ArtifactStore, ref: ArtifactRef, local: Path) -> None:
        seen.append(ref.url)
        real(self, ref, local)

    monkeypatch.setattr(ArtifactStore, "_download", counting)
    return seen


def flip_bytes(path: Path, keep_times: bool = False) -> None:
    """Overwrite the middle of ``path`` in place, as an editor or a bad disk would: same size."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(before.st_size // 2)
        old = f.read(16)
        f.seek(before.st_size // 2)
        f.write(bytes(b ^ 0xFF for b in old))
    if keep_times:  # what `touch -r` does: the mtime put back (the ctime cannot be)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size


def _model_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(64 * 1024)
    path = tmp_path / "src" / "model.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, data


def _model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "src" / "bert"
    (folder / "weights").mkdir(parents=True)
    (folder / "config.json").write_bytes(b'{"layers": 2}')
    (folder / "weights" / "part-0.bin").write_bytes(os.urandom(32 * 1024))
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_an_unchanged_cached_copy_is_trusted_without_hashing(
    store: ArtifactStore, tmp_path: Path, hashes: list[Path], downloads: list[str]
) -> None:
    source, _ = _model_file(tmp_path)
    ref = store.put(source)
    store.fetch(ref)
    hashes.clear()

    for _ in range(3):
        store.fetch(ref)

    assert hashes == [] and len(downloads) == 1


@pytest.mark.parametrize("keep_times", [False, True], ids=["write", "write-then-touch-r"])
def test_a_changed_cached_file_is_fetched_again(
    store: ArtifactStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    downloads: list[str],
    keep_times: bool,
) -> None:
    source, data = _model_file(tmp_path)
    ref = store.put(source)
    cached = store.fetch(ref)
    flip_bytes(cached, keep_times)
    assert cached.read_bytes() != data

    with caplog.at_level(logging.WARNING, logger="ferry.registry.artifacts"):
        again = store.fetch(ref)

    assert again == cached and again.read_bytes() == data
    assert len(downloads) == 2
    assert ref.url in caplog.text and "no longer matches its sha256" in caplog.text
    downloads.clear()
    assert store.fetch(ref).read_bytes() == data and downloads == []  # stamped again: trusted from here


def test_a_changed_cached_file_with_a_corrupt_source_is_refused_naming_the_artifact(
    store: ArtifactStore, tmp_path: Path
) -> None:
    source, data = _model_file(tmp_path)
    ref = store.put(source)
    cached = store.fetch(ref)
    flip_bytes(cached)
    flip_bytes(Path(url_to_fs(ref.url)[1]))

    with pytest.raises(EngineError, match=f"artifact {ref.url} is corrupt: expected sha256 {ref.sha256}"):
        store.fetch(ref)

    assert not cached.exists()  # the wrong bytes are gone: no later load can pick them up
    with pytest.raises(EngineError, match="is corrupt"):
        store.fetch(ref)


def test_a_touched_but_unchanged_file_is_hashed_once_not_fetched_again(
    store: ArtifactStore, tmp_path: Path, hashes: list[Path], downloads: list[str]
) -> None:
    source, data = _model_file(tmp_path)
    ref = store.put(source)
    cached = store.fetch(ref)
    os.utime(cached, ns=(1_000_000_000, 1_000_000_000))
    hashes.clear()

    assert store.fetch(ref).read_bytes() == data
    assert store.fetch(ref).read_bytes() == data

    assert hashes == [cached] and len(downloads) == 1


def test_a_cache_without_stamps_is_checked_by_hash(store: ArtifactStore, tmp_path: Path, downloads: list[str]) -> None:
    """A copy cached before stamps existed (or whose stamp was lost): hashed, then trusted or fetched again."""
    source, data = _model_file(tmp_path)
    ref = store.put(source)
    cached = store.fetch(ref)
    stamps = [p for p in cached.parent.iterdir() if p != cached]
    assert [p.name for p in stamps] == [".model.bin.ferry-stamp"]
    stamps[0].unlink()

    assert store.fetch(ref).read_bytes() == data and len(downloads) == 1
    stamps[0].unlink()
    flip_bytes(cached)
    assert store.fetch(ref).read_bytes() == data and len(downloads) == 2


@pytest.mark.parametrize("change", ["flip", "flip-then-touch-r", "add", "delete", "replace-with-link"])
def test_a_changed_cached_folder_is_fetched_again(
    store: ArtifactStore, tmp_path: Path, downloads: list[str], change: str
) -> None:
    folder = _model_folder(tmp_path)
    ref = store.put(folder)
    cached = store.fetch(ref)
    weights = cached / "weights" / "part-0.bin"
    if change.startswith("flip"):
        flip_bytes(weights, keep_times=change.endswith("touch-r"))
    elif change == "add":
        (cached / "weights" / "extra.py").write_text("import os\n")
    elif change == "delete":
        weights.unlink()
    else:
        weights.unlink()
        weights.symlink_to(cached / "config.json")

    again = store.fetch(ref)

    assert again == cached and _tree(again) == _tree(folder)
    assert not weights.is_symlink()
    assert len(downloads) == 2
    assert sorted(p.name for p in cached.parent.iterdir()) == [".bert.ferry-stamp", "bert"]


def test_a_touched_but_unchanged_folder_file_is_hashed_not_fetched_again(
    store: ArtifactStore, tmp_path: Path, hashes: list[Path], downloads: list[str]
) -> None:
    ref = store.put(_model_folder(tmp_path))
    cached = store.fetch(ref)
    os.utime(cached / "config.json", ns=(1_000_000_000, 1_000_000_000))
    hashes.clear()

    store.fetch(ref)
    store.fetch(ref)

    assert hashes == [cached / "config.json"] and len(downloads) == 1


def test_a_changed_cached_folder_with_a_corrupt_source_is_refused_naming_the_artifact(
    store: ArtifactStore, tmp_path: Path
) -> None:
    ref = store.put(_model_folder(tmp_path))
    cached = store.fetch(ref)
    flip_bytes(cached / "weights" / "part-0.bin")
    flip_bytes(Path(url_to_fs(ref.url)[1]))

    with pytest.raises(EngineError, match=f"artifact {ref.url} is corrupt"):
        store.fetch(ref)

    assert not cached.exists()


def test_a_folder_cached_without_a_stamp_is_fetched_again(
    store: ArtifactStore, tmp_path: Path, downloads: list[str]
) -> None:
    folder = _model_folder(tmp_path)
    ref = store.put(folder)
    cached = store.fetch(ref)
    (cached.parent / ".bert.ferry-stamp").unlink()

    assert _tree(store.fetch(ref)) == _tree(folder) and len(downloads) == 2
    store.fetch(ref)
    assert len(downloads) == 2


# End to end: a real `ferry serve`, its cached model changed between two runs --------------------------------


def _logreg(flip: bool) -> LogisticRegression:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    y = (x.sum(axis=1) > 0).astype(int)
    return LogisticRegression().fit(x, 1 - y if flip else y)


@pytest.mark.e2e
def test_served_answer_stays_right_when_the_cached_model_is_changed(
    ferry_sqlite: Ferry, ferry_home: Path, tmp_path: Path
) -> None:
    """The cached model is swapped for one of the same size that answers the opposite: the restart serves right."""
    joblib.dump(_logreg(flip=False), tmp_path / "m.pkl")
    joblib.dump(_logreg(flip=True), tmp_path / "flipped.pkl")
    assert (tmp_path / "m.pkl").stat().st_size == (tmp_path / "flipped.pkl").stat().st_size
    ferry_sqlite.service()
    out = ferry_sqlite("model", "upload", "--name", "logreg", "--path", str(tmp_path / "m.pkl")).out
    model_id = out.strip().rsplit("=", 1)[1]
    ferry_sqlite("model", "add", "--engine", "sklearn", "--endpoint", "m", "--model-id", model_id,
                 "--preprocess", str(SKLEARN))  # fmt: skip

    for round_ in ("first run", "after the cached model changed"):
        if round_ != "first run":
            (cached,) = (ferry_home / "cache").glob("*/m.pkl")
            with open(cached, "r+b") as f:  # the flipped model's bytes, written over the cached one in place
                f.write((tmp_path / "flipped.pkl").read_bytes())
        server = Server(tmp_path, env={"FERRY_POLL_INTERVAL": "0.2"})
        try:
            server.wait_ready()
            assert server.wait_endpoint("m", {"x0": 1, "x1": 2}) == {"y": [1]}, round_
            assert server.serve("m", {"x0": -1, "x1": -2}).json() == {"y": [0]}, round_
        finally:
            server.stop()
    assert "no longer matches its sha256" in server.log_path.read_text()
    assert cached.read_bytes() == (tmp_path / "m.pkl").read_bytes()
