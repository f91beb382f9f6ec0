"""Archives ferry unpacks, and folders it packs.

One table of crafted archives (tar, tar.gz, zip) x every entry point that unpacks one (``ArtifactStore.fetch``
of a folder artifact, the ClearML stand-in's ``StorageManager.get_local_copy``): each is refused naming the
archive and the entry, and nothing is written anywhere, least of all outside the target. Then the upload
side: links to files are stored as their content (named in the CLI's output), a Hugging Face cache snapshot
round-trips with real contents, and folder links, pipes and broken links are refused, named, before
anything is uploaded.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ferry.errors import EngineError, InvalidInput
from ferry.registry.artifacts import ArtifactRef, ArtifactStore
from ferry.registry.packing import dereferenced_links, pack_folder
from ferry.serving.usercode.clearml_shim import StorageManager
from tests.conftest import Ferry

UP = "../../../../../"  # from either entry point's target folder, up to the test's tmp_path


@dataclass(frozen=True)
class Member:
    kind: str  # file, dir, symlink, hardlink, chr, fifo
    name: str
    link: str = ""
    data: bytes = b"evil"


def F(name: str, data: bytes = b"evil") -> Member:
    return Member("file", name, data=data)


def D(name: str) -> Member:
    return Member("dir", name)


def S(name: str, link: str) -> Member:
    return Member("symlink", name, link)


def H(name: str, link: str) -> Member:
    return Member("hardlink", name, link)


TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "fifo": tarfile.FIFOTYPE,
}
ZIP_MODES = {
    "file": stat.S_IFREG | 0o644,
    "dir": stat.S_IFDIR | 0o755,
    "symlink": stat.S_IFLNK | 0o777,
    "chr": stat.S_IFCHR | 0o644,
    "fifo": stat.S_IFIFO | 0o644,
}


def build(fmt: str, members: list[Member], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zipped:
            for m in members:
                info = zipfile.ZipInfo(m.name + ("/" if m.kind == "dir" else ""))
                info.external_attr = ZIP_MODES[m.kind] << 16
                data = m.link.encode() if m.kind == "symlink" else m.data if m.kind == "file" else b""
                zipped.writestr(info, data)
        return path
    with tarfile.open(path, "w:gz" if fmt == "tar.gz" else "w") as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.linkname = TAR_TYPES[m.kind], m.link
            data = m.data if m.kind == "file" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


ALL, TAR = ("tar", "tar.gz", "zip"), ("tar", "tar.gz")

# case: (formats, members (given the folder outside), the refusal's words after "unpacked: ")
UNSAFE: dict[str, tuple[tuple[str, ...], Callable[[Path], list[Member]], str]] = {
    "dot-dot": (ALL, lambda _: [F(UP + "escaped.txt")], f"'{UP}escaped.txt' points outside the folder"),
    "dot-dot deep in a name": (
        ALL,
        lambda _: [F("a/b/../../" + UP + "escaped.txt")],
        f"'a/b/../../{UP}escaped.txt' points outside the folder",
    ),
    "absolute": (ALL, lambda out: [F(f"{out}/abs.txt")], "/outside/abs.txt' is an absolute path"),
    "symlink to /etc": (ALL, lambda _: [S("etc", "/etc")], "'etc' -> '/etc' is an absolute path"),
    "symlink climbing out": (ALL, lambda _: [S("up", UP)], f"'up' -> '{UP}' points outside the folder"),
    "symlink to an outside folder, written through": (
        ALL,
        lambda out: [S("out", str(out)), F("out/escaped.txt")],
        "'out' -> ",
    ),
    "symlink chain leaving when followed": (
        ALL,
        lambda _: [D("d"), S("d/up", ".."), S("l2", "d/up/../escaped")],
        "'l2' -> 'd/up/../escaped' points outside the folder through another link",
    ),
    "entry under a symlinked folder": (
        ALL,
        lambda _: [S("inner", "."), F("inner/escaped.txt")],
        "'inner/escaped.txt' lies under the link 'inner'",
    ),
    "hardlink out": (TAR, lambda _: [H("hard", UP + "escaped.txt")], f"'hard' -> '{UP}escaped.txt' points outside"),
    "hardlink to /etc/passwd": (TAR, lambda _: [H("hard", "/etc/passwd")], "'hard' -> '/etc/passwd' is an absolute"),
    "device": (ALL, lambda _: [Member("chr", "null")], "'null' is a special file (a character device)"),
    "fifo": (ALL, lambda _: [Member("fifo", "pipe")], "'pipe' is a special file (a pipe)"),
}

CASES = [(case, fmt) for case, (formats, _, _) in UNSAFE.items() for fmt in formats]


@dataclass
class EntryPoint:
    """One way ferry unpacks an archive: ``call`` unpacks it; ``label`` is how its errors name the archive."""

    call: Callable[[], object]
    label: str
    expected_files: set[Path]  # files the entry point keeps even on refusal (StorageManager's download)


def via_artifact(archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EntryPoint:
    store = ArtifactStore(str(tmp_path / "remote"), tmp_path / "a" / "b" / "cache", progress=False)
    ref = store.register(str(archive)).model_copy(update={"is_dir": True, "filename": "model"})
    return EntryPoint(lambda: store.fetch(ref), f"artifact {ref.url}", set())


def via_storage_manager(archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EntryPoint:
    monkeypatch.delenv("FERRY_CACHE_DIR", raising=False)
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))
    url = archive.as_uri()
    kept: set[Path] = set()  # the downloaded archive itself, once the call made it

    def call() -> object:
        try:
            return StorageManager.get_local_copy(remote_url=url)
        finally:
            kept.update((tmp_path / "home" / "cache" / "storage-manager").glob(f"*/{archive.name}"))

    return EntryPoint(call, f"archive {url}", kept)


ENTRY_POINTS = {"ArtifactStore.fetch": via_artifact, "StorageManager.get_local_copy": via_storage_manager}


def snapshot(root: Path) -> set[Path]:
    found: set[Path] = set()
    for current, dirnames, filenames in os.walk(root):
        found.update(Path(current) / name for name in dirnames + filenames)
    return found


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize(("case", "fmt"), CASES, ids=[f"{c}-{f}" for c, f in CASES])
def test_unsafe_archive_is_refused_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, fmt: str, entry_point: str
) -> None:
    _, members, words = UNSAFE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = build(fmt, members(outside), tmp_path / "src" / f"evil.{fmt}")
    entry = ENTRY_POINTS[entry_point](archive, tmp_path, monkeypatch)
    before = snapshot(tmp_path)

    with pytest.raises(EngineError) as refused:
        entry.call()

    message = str(refused.value)
    assert f"{entry.label} holds an unsafe entry, so it was not unpacked: " in message
    assert words in message
    written = snapshot(tmp_path) - before
    assert {p for p in written if p.is_symlink() or not p.is_dir()} == entry.expected_files, "wrote a file or link"
    assert not [p for p in written if p.name.endswith(("_extracted", "model")) or p.name.startswith(".unpack-")]
    assert list(outside.iterdir()) == []


SAFE = [
    D("weights"),
    F("weights/part-0.bin", b"part zero"),
    F("config.json", b"{}"),
    S("weights/latest.bin", "part-0.bin"),
    S("top", "weights"),
]


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize("fmt", ALL)
def test_safe_archive_unpacks_with_its_inner_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, entry_point: str
) -> None:
    """The control: the same entry points unpack an archive whose links stay inside, links included."""
    archive = build(fmt, SAFE, tmp_path / "src" / f"good.{fmt}")
    entry = ENTRY_POINTS[entry_point](archive, tmp_path, monkeypatch)

    folder = Path(str(entry.call()))

    assert (folder / "config.json").read_bytes() == b"{}"
    assert (folder / "weights" / "latest.bin").is_symlink()
    assert (folder / "weights" / "latest.bin").read_bytes() == b"part zero"
    assert (folder / "top" / "part-0.bin").read_bytes() == b"part zero"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".unpack-")]


def test_hardlink_inside_unpacks_as_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = build("tar.gz", [F("a.bin", b"weights"), H("b.bin", "a.bin")], tmp_path / "src" / "links.tar.gz")
    folder = via_artifact(archive, tmp_path, monkeypatch).call()

    assert isinstance(folder, Path)
    assert (folder / "b.bin").read_bytes() == b"weights"
    assert os.stat(folder / "a.bin").st_ino != os.stat(folder / "b.bin").st_ino


def test_storage_manager_error_fails_the_endpoint_load_readably(service, tmp_path: Path) -> None:
    """A Preprocess that fetches an unsafe archive: the endpoint's load error names the archive and entry."""
    archive = build("tar.gz", [F(UP + "escaped.txt")], tmp_path / "src" / "extra.tar.gz")
    code = service.code(
        f"""
        from clearml import StorageManager

        class Preprocess:
            def __init__(self):
                self.folder = StorageManager.get_local_copy(remote_url={archive.as_uri()!r})

            def process(self, data, state, collect=None):
                return data
        """
    )
    service.add("extra", code=code)
    service.apply()

    states = service.plane.endpoint_states()
    assert "holds an unsafe entry, so it was not unpacked" in json.dumps(states, default=str)
    assert f"'{UP}escaped.txt' points outside the folder" in json.dumps(states, default=str)
    assert not list(tmp_path.rglob("escaped.txt"))


# Folders at upload -----------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "remote"), tmp_path / "cache", progress=False)


def hf_snapshot(root: Path) -> Path:
    """A Hugging Face cache entry: the snapshot's files are links into ../../blobs (one level deeper for sub/)."""
    repo = root / "models--org--tiny"
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "c0ffee").write_bytes(b'{"hidden_size": 8}')
    (blobs / "beef01").write_bytes(b"safetensors bytes")
    (blobs / "5ca1ab").write_bytes(b"tokenizer")
    snapshot = repo / "snapshots" / "abc123"
    (snapshot / "sub").mkdir(parents=True)
    (snapshot / "config.json").symlink_to("../../blobs/c0ffee")
    (snapshot / "model.safetensors").symlink_to("../../blobs/beef01")
    (snapshot / "sub" / "tokenizer.json").symlink_to("../../../blobs/5ca1ab")
    return snapshot


HF_LINKS = [
    ("config.json", "../../blobs/c0ffee"),
    ("model.safetensors", "../../blobs/beef01"),
    ("sub/tokenizer.json", "../../../blobs/5ca1ab"),
]
HF_CONTENT = {
    "config.json": b'{"hidden_size": 8}',
    "model.safetensors": b"safetensors bytes",
    "sub/tokenizer.json": b"tokenizer",
}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_file_links_are_stored_as_their_content(store: ArtifactStore, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"weights")
    (folder / "latest.bin").symlink_to("weights.bin")
    (tmp_path / "elsewhere.txt").write_bytes(b"from outside")
    (folder / "notes.txt").symlink_to("../elsewhere.txt")

    assert dereferenced_links(folder) == [("latest.bin", "weights.bin"), ("notes.txt", "../elsewhere.txt")]
    fetched = store.fetch(store.put(folder))

    assert _files(fetched) == {"weights.bin": b"weights", "latest.bin": b"weights", "notes.txt": b"from outside"}
    assert not [p for p in fetched.rglob("*") if p.is_symlink()]


def test_hf_snapshot_uploads_with_real_contents(store: ArtifactStore, tmp_path: Path) -> None:
    snapshot = hf_snapshot(tmp_path)

    assert dereferenced_links(snapshot) == HF_LINKS
    fetched = store.fetch(store.put(snapshot))

    assert _files(fetched) == HF_CONTENT
    assert not [p for p in fetched.rglob("*") if p.is_symlink()]


def test_packing_links_is_reproducible_and_equals_packing_copies(tmp_path: Path) -> None:
    snapshot = hf_snapshot(tmp_path)
    copies = tmp_path / "copies"
    for relative, content in HF_CONTENT.items():
        (copies / relative).parent.mkdir(parents=True, exist_ok=True)
        (copies / relative).write_bytes(content)
        os.chmod(copies / relative, stat.S_IMODE(os.stat(snapshot / relative).st_mode))
    os.chmod(copies / "sub", stat.S_IMODE(os.stat(snapshot / "sub").st_mode))

    first = pack_folder(snapshot, tmp_path / "1.tar.gz").read_bytes()
    second = pack_folder(snapshot, tmp_path / "2.tar.gz").read_bytes()

    assert first == second
    assert pack_folder(copies, tmp_path / "3.tar.gz").read_bytes() == first


def _dir_link(folder: Path, outside: Path) -> str:
    (outside / "shared").mkdir()
    (folder / "shared").symlink_to(outside / "shared")
    return f"'shared' -> '{outside / 'shared'}' is a link to a folder"


def _fifo(folder: Path, outside: Path) -> str:
    os.mkfifo(folder / "queue")
    return "'queue' is a special file (a pipe)"


def _broken(folder: Path, outside: Path) -> str:
    (folder / "sub").mkdir()
    (folder / "sub" / "gone.bin").symlink_to("../../nowhere.bin")
    return "'sub/gone.bin' -> '../../nowhere.bin' is a broken link"


def _link_to_fifo(folder: Path, outside: Path) -> str:
    os.mkfifo(outside / "queue")
    (folder / "queue").symlink_to(outside / "queue")
    return "is a link to a special file (a pipe)"


def _link_loop(folder: Path, outside: Path) -> str:
    (folder / "loop").symlink_to("loop")
    return "'loop' -> 'loop' is a broken link"


REFUSED_FOLDERS = {
    "link to a folder": _dir_link,
    "fifo": _fifo,
    "broken link": _broken,
    "link to a fifo": _link_to_fifo,
    "link loop": _link_loop,
}


@pytest.mark.parametrize("case", REFUSED_FOLDERS)
def test_folder_with_entries_that_cannot_be_stored_is_refused_before_upload(
    store: ArtifactStore, tmp_path: Path, case: str
) -> None:
    folder, outside = tmp_path / "model", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "weights.bin").write_bytes(b"weights")
    words = REFUSED_FOLDERS[case](folder, outside)

    with pytest.raises(InvalidInput) as refused:
        store.put(folder)

    message = str(refused.value)
    assert words in message and f"cannot upload folder {str(folder)!r}" in message
    assert "nothing was uploaded" in message
    assert not (tmp_path / "remote").exists()
    assert [p.name for p in store.cache_dir.iterdir()] == []


def test_folder_refusal_names_every_entry(store: ArtifactStore, tmp_path: Path) -> None:
    folder, outside = tmp_path / "model", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    words = [make(folder, outside) for make in (_dir_link, _fifo, _broken)]

    with pytest.raises(InvalidInput) as refused:
        store.put(folder)

    assert all(w in str(refused.value) for w in words)


def _registry_model(ferry: Ferry, name: str) -> ArtifactRef:
    (doc,) = json.loads(ferry("model", "list", "--name", name, "--json").out)
    return ArtifactRef(**{k: doc[k] for k in ("url", "sha256", "size", "filename", "is_dir")})


def test_cli_upload_names_each_link_it_stored(ferry_sqlite: Ferry, tmp_path: Path) -> None:
    snapshot = hf_snapshot(tmp_path / "hf")

    out = ferry_sqlite("model", "upload", "--name", "tiny", "--path", str(snapshot)).out

    lines = out.strip().splitlines()
    assert lines[:-1] == [f"stored the content of link {rel} -> {target}" for rel, target in HF_LINKS]
    assert lines[-1].startswith("Model created and registered, new Model ID=")
    fetched = ArtifactStore("", tmp_path / "fresh-cache", progress=False).fetch(_registry_model(ferry_sqlite, "tiny"))
    assert _files(fetched) == HF_CONTENT


def test_cli_add_preprocess_folder_names_its_links_and_refuses_a_folder_link(
    ferry_sqlite: Ferry, tmp_path: Path
) -> None:
    sid = ferry_sqlite.service()
    code = tmp_path / "code"
    code.mkdir()
    (tmp_path / "shared.py").write_text("LABELS = ['a', 'b']\n")
    (code / "preprocess.py").write_text(
        "class Preprocess:\n    def process(self, data, state, collect=None):\n        return data\n"
    )
    (code / "labels.py").symlink_to("../shared.py")

    out = ferry_sqlite(
        "--id", sid, "model", "add", "--engine", "custom", "--endpoint", "e", "--preprocess", str(code)
    ).out

    assert "stored the content of link labels.py -> ../shared.py" in out.splitlines()
    (code / "vendored").symlink_to(tmp_path)
    refused = ferry_sqlite(
        "--id", sid, "model", "add", "--engine", "custom", "--endpoint", "f", "--preprocess", str(code), ok=False
    )
    assert f"'vendored' -> '{tmp_path}' is a link to a folder" in refused.err
    assert "cp -rL" in refused.err


def test_storage_manager_unpacks_by_name_as_clearml_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A TorchScript ``.pt`` or numpy ``.npz`` is a zip inside: it comes back as the file, not a folder."""
    monkeypatch.delenv("FERRY_CACHE_DIR", raising=False)
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))
    (tmp_path / "src").mkdir()
    for name in ("weights.pt", "arrays.npz", "bundle.zip"):
        with zipfile.ZipFile(tmp_path / "src" / name, "w") as packed:
            packed.writestr("data.bin", b"x")
    for name, unpacked in (("weights.pt", False), ("arrays.npz", False), ("bundle.zip", True)):
        local = Path(StorageManager.get_local_copy(remote_url=(tmp_path / "src" / name).as_uri()))
        assert local.is_dir() == unpacked, name
        assert (local / "data.bin").read_bytes() == b"x" if unpacked else local.name == name


def test_uploading_a_pipe_names_what_it_is(tmp_path: Path):
    os.mkfifo(tmp_path / "pipe")
    store = ArtifactStore(str(tmp_path / "remote"), tmp_path / "cache", progress=False)
    with pytest.raises(InvalidInput, match="it is a pipe, not a file or folder"):
        store.put(tmp_path / "pipe")
