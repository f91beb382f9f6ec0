"""ArtifactStore over fsspec URLs plus a local content-addressed cache (by sha256).

S3-compatible servers: set ``AWS_ENDPOINT_URL`` (read by botocore under s3fs); no endpoint is hard-coded.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, NamedTuple

from pydantic import BaseModel, ConfigDict

from ferry.errors import EngineError, InvalidInput, NotFound

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

CHUNK_SIZE = 8 * 1024 * 1024
PROGRESS_MIN_SIZE = 4 * 1024 * 1024
STAGING = ".staging"

log = logging.getLogger(__name__)

Advance = Callable[[int], None]


class ArtifactRef(BaseModel):
    """A stored file (or a folder packed as one archive) with its checksum."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    sha256: str
    size: int
    filename: str
    is_dir: bool = False


class Stored(NamedTuple):
    """What ``ArtifactStore.store`` did: the object, and whether this call wrote it."""

    ref: ArtifactRef
    created: bool


class ArtifactStore:
    """Artifacts behind fsspec URLs plus a local cache keyed by sha256."""

    def __init__(self, root_url: str, cache_dir: Path, progress: bool = True) -> None:
        self.root_url = root_url
        self.cache_dir = Path(cache_dir)
        self.progress = progress

    def put(self, local_path: str | Path, destination: str | None = None) -> ArtifactRef:
        """Upload a file, or a folder packed as one ``.tar.gz``, under its sha256 (stored once)."""
        return self.store(local_path, destination).ref

    def store(self, local_path: str | Path, destination: str | None = None) -> Stored:
        """Like ``put``, and say whether this call wrote the object (False: the same bytes were already stored)."""
        source = Path(local_path).resolve()
        if not source.exists():
            raise NotFound(f"cannot upload {local_path}: no such file or folder")
        fs, root = url_to_fs(destination or self.root_url)
        if source.is_file():
            return self._upload(fs, root, source, source.name, is_dir=False)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".pack-") as tmp:
            archive = pack_folder(source, Path(tmp) / f"{source.name}.tar.gz")
            return self._upload(fs, root, archive, source.name, is_dir=True)

    def exists(self, ref: ArtifactRef) -> bool:
        """Whether the object behind ``ref`` is stored, at its full size."""
        fs, path = url_to_fs(ref.url)
        return _remote_size_or_none(fs, path) == ref.size

    def register(self, url: str) -> ArtifactRef:
        """Record a file that already lives at ``url`` without copying it (it is read once to hash it)."""
        fs, path = url_to_fs(url)
        size, filename = _remote_size(fs, path, url), PurePosixPath(path).name
        with _open_remote(fs, path, url) as src, self._bar(f"hashing {filename}", size) as advance:
            digest, _ = _copy(src, None, advance)
        canonical = url if "://" in url else fs.unstrip_protocol(path)
        return ArtifactRef(url=canonical, sha256=digest, size=size, filename=filename)

    def fetch(self, ref: ArtifactRef) -> Path:
        """Return the artifact's local path (a folder for ``is_dir``), downloading and verifying it once."""
        target = self.cache_dir / ref.sha256 / ref.filename
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        download = self.cache_dir / f".download-{uuid.uuid4().hex}"
        try:
            self._download(ref, download)
            if ref.is_dir:
                _unpack_into_place(ref, download, target)
            else:
                _move_into_place(download, target)
        finally:
            download.unlink(missing_ok=True)
        return target

    def remove(self, ref: ArtifactRef) -> None:
        """Delete the stored object; an object already gone is not an error."""
        fs, path = url_to_fs(ref.url)
        with suppress(FileNotFoundError):
            fs.rm(path)

    def _upload(self, fs: AbstractFileSystem, root: str, source: Path, filename: str, is_dir: bool) -> Stored:
        size = source.stat().st_size
        sha256 = _hash_file(source)
        name = f"{filename}.tar.gz" if is_dir else filename
        final = f"{root.rstrip('/')}/{sha256[:2]}/{sha256}/{name}"
        created = _remote_size_or_none(fs, final) != size
        if created:
            self._write_atomically(fs, source, root, final, size)
        url = fs.unstrip_protocol(final)
        return Stored(ArtifactRef(url=url, sha256=sha256, size=size, filename=filename, is_dir=is_dir), created)

    def _write_atomically(self, fs: AbstractFileSystem, source: Path, root: str, final: str, size: int) -> None:
        # Readers only ever see complete objects: write aside, then move into the content-addressed name.
        staging = f"{root.rstrip('/')}/{STAGING}/{uuid.uuid4().hex}-{PurePosixPath(final).name}"
        try:
            fs.makedirs(posixpath.dirname(staging), exist_ok=True)
            with (
                open(source, "rb") as src,
                fs.open(staging, "wb") as dst,
                self._bar(f"uploading {source.name}", size) as advance,
            ):
                _copy(src, dst, advance)
            fs.makedirs(posixpath.dirname(final), exist_ok=True)
            fs.mv(staging, final)
        except BaseException:
            _discard(fs, staging)
            raise

    def _download(self, ref: ArtifactRef, local: Path) -> None:
        fs, path = url_to_fs(ref.url)
        fs.invalidate_cache(path)
        with (
            _open_remote(fs, path, ref.url) as src,
            open(local, "wb") as dst,
            self._bar(f"downloading {ref.filename}", ref.size) as advance,
        ):
            digest, _ = _copy(src, dst, advance)
        if digest != ref.sha256:
            raise EngineError(
                f"artifact {ref.url} is corrupt: expected sha256 {ref.sha256}, got {digest}; re-upload it",
                url=ref.url,
            )

    @contextmanager
    def _bar(self, label: str, total: int) -> Iterator[Advance]:
        if not self.progress or total <= PROGRESS_MIN_SIZE:
            yield lambda _n: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)


def url_to_fs(url: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem and path behind ``url`` (fsspec is imported on first use: it is slow to import)."""
    from fsspec.core import url_to_fs as resolve

    return resolve(url)


def pack_folder(folder: Path, archive: Path) -> Path:
    """Pack ``folder``'s contents into a reproducible ``.tar.gz``: same tree, same bytes."""
    # filename="" and mtime=0 keep the path and the clock out of the gzip header.
    with (
        open(archive, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for relative in _sorted_entries(folder):
            _add_normalised(tar, folder / relative, relative)
    return archive


def _sorted_entries(folder: Path) -> list[str]:
    entries = []
    for current, dirnames, filenames in os.walk(folder):
        base = Path(current).relative_to(folder)
        entries += [(base / name).as_posix() for name in dirnames + filenames]
    return sorted(entries)


def _add_normalised(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = tar.gettarinfo(str(path), arcname=arcname)
    if info is None:  # sockets and other special files cannot be archived
        return
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if info.isreg():
        with open(path, "rb") as data:
            tar.addfile(info, data)
    else:
        tar.addfile(info)


def _unpack_into_place(ref: ArtifactRef, archive: Path, target: Path) -> None:
    unpacked = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        _safe_extract(ref, archive, unpacked)
        _move_into_place(unpacked, target)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def _safe_extract(ref: ArtifactRef, archive: Path, into: Path) -> None:
    with tarfile.open(archive, mode="r:gz") as tar:
        members = tar.getmembers()
        _check_members(ref, members)
        if not hasattr(tarfile, "data_filter"):
            tar.extractall(into, members)
            return
        try:  # a second guard: the "data" filter also resolves what is already on disk
            tar.extractall(into, members, filter="data")
        except tarfile.FilterError as exc:
            raise _unsafe(ref, str(exc)) from exc


def _check_members(ref: ArtifactRef, members: list[tarfile.TarInfo]) -> None:
    """Refuse any entry that would land, or point, outside the folder it is unpacked into."""
    links: set[PurePosixPath] = set()
    for member in members:
        name = _inside(ref, member.name, member.name)
        through = next((parent for parent in name.parents if parent in links), None)
        if through is not None:
            raise _unsafe(ref, f"{member.name!r} lies under the link {through.as_posix()!r}")
        if member.issym():
            _inside(ref, (name.parent / member.linkname).as_posix(), member.name, member.linkname)
            links.add(name)
        elif member.islnk():
            _inside(ref, member.linkname, member.name, member.linkname)
        elif not (member.isreg() or member.isdir()):
            raise _unsafe(ref, f"{member.name!r} is a special file (device, pipe)")


def _inside(ref: ArtifactRef, path: str, member: str, target: str | None = None) -> PurePosixPath:
    """``path`` normalised, or an error when it is absolute or climbs out with ``..``."""
    shown = f"{member!r} -> {target!r}" if target is not None else repr(member)
    if path.startswith(("/", "\\")):
        raise _unsafe(ref, f"{shown} is an absolute path")
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise _unsafe(ref, f"{shown} points outside the folder")
    return PurePosixPath(normal)


def _unsafe(ref: ArtifactRef, why: str) -> EngineError:
    return EngineError(
        f"artifact {ref.url} holds an unsafe entry, so it was not unpacked: {why}; "
        "re-upload the folder with `ferry model upload --path FOLDER`",
        url=ref.url,
    )


def _move_into_place(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError:
        # Another process fetching the same artifact got there first; its copy is just as good.
        if not target.exists():
            raise


def _hash_file(path: Path) -> str:
    with open(path, "rb") as src:
        digest, _ = _copy(src, None, lambda _n: None)
    return digest


def _copy(src: IO[bytes], dst: IO[bytes] | None, advance: Advance) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK_SIZE):
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
        size += len(chunk)
        advance(len(chunk))
    return digest.hexdigest(), size


@contextmanager
def _open_remote(fs: AbstractFileSystem, path: str, url: str) -> Iterator[IO[bytes]]:
    try:
        src = fs.open(path, "rb", block_size=CHUNK_SIZE)
    except FileNotFoundError as exc:
        raise NotFound(f"artifact {url} not found", url=url) from exc
    with src:
        yield src


def _remote_size(fs: AbstractFileSystem, path: str, url: str) -> int:
    fs.invalidate_cache(path)
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise NotFound(f"artifact {url} not found", url=url) from exc
    if info["type"] != "file":
        raise InvalidInput(f"{url} is a folder: upload it with --path to store it as one artifact", url=url)
    return int(info["size"])


def _remote_size_or_none(fs: AbstractFileSystem, path: str) -> int | None:
    fs.invalidate_cache(path)
    try:
        return int(fs.info(path)["size"])
    except FileNotFoundError:
        return None


def _discard(fs: AbstractFileSystem, path: str) -> None:
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass
    except Exception:  # the upload's own error is the one to surface; this is cleanup
        log.warning("could not delete staging object %s", path, exc_info=True)
