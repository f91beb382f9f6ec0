"""ArtifactStore over fsspec URLs plus a local content-addressed cache (by sha256).

S3-compatible servers: set ``AWS_ENDPOINT_URL`` (read by botocore under s3fs); no endpoint is hard-coded.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, NamedTuple

from pydantic import BaseModel, ConfigDict

from ferry.errors import EngineError, InvalidInput, NotFound
from ferry.registry.packing import file_kind, pack_folder
from ferry.registry.stamps import (
    copy_hashing,
    discard_cached,
    hash_file,
    intact,
    stamp_file,
    stamp_folder,
    stamp_path,
)
from ferry.registry.unpack import unpack

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

CHUNK_SIZE = 8 * 1024 * 1024
PROGRESS_MIN_SIZE = 4 * 1024 * 1024
STAGING = ".staging"
UNSAFE_HINT = "; re-upload the folder with `ferry model upload --path FOLDER`"

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
        """Upload a file, or a folder packed as one ``.tar`` (not compressed), under its sha256 (stored once)."""
        return self.store(local_path, destination).ref

    def store(self, local_path: str | Path, destination: str | None = None) -> Stored:
        """Like ``put``, and say whether this call wrote the object (False: the same bytes were already stored)."""
        source = Path(local_path).resolve()
        if not source.exists():
            raise NotFound(f"cannot upload {local_path}: no such file or folder")
        fs, root = url_to_fs(destination or self.root_url)
        if source.is_file():
            return self._upload(fs, root, source, source.name, is_dir=False)
        if not source.is_dir():
            kind = file_kind(source.stat().st_mode)
            raise InvalidInput(f"cannot upload {local_path}: it is {kind}, not a file or folder")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".pack-") as tmp:
            archive = pack_folder(source, Path(tmp) / f"{source.name}.tar")
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
            digest, _ = copy_hashing(src, None, advance)
        canonical = url if "://" in url else fs.unstrip_protocol(path)
        return ArtifactRef(url=canonical, sha256=digest, size=size, filename=filename)

    def fetch(self, ref: ArtifactRef) -> Path:
        """Return the artifact's local path (a folder for ``is_dir``), downloading and verifying it once.

        A cached copy is checked against the stamp written when it was verified (see ``_intact``): one that
        changed since is hashed again, and fetched again when its bytes are no longer the artifact's.
        """
        target = self.cache_dir / ref.sha256 / ref.filename
        if os.path.lexists(target):
            stamped = stamp_path(target).exists()
            if intact(ref, target):
                return target
            why = "changed since it was verified and no longer matches" if stamped else "could not be verified as"
            log.warning(
                "the cached copy of artifact %s (%s) %s its sha256 %s: fetching it again",
                ref.url,
                target,
                why,
                ref.sha256,
            )
            discard_cached(target)
        else:
            stamp_path(target).unlink(missing_ok=True)  # the copy it described was deleted
        target.parent.mkdir(parents=True, exist_ok=True)
        download = self.cache_dir / f".download-{uuid.uuid4().hex}"
        hashes: dict[str, str] = {}
        inode = 0
        try:
            self._download(ref, download)
            if ref.is_dir:
                hashes = unpack(download, target, f"artifact {ref.url}", UNSAFE_HINT).files
            else:
                inode = download.stat().st_ino
                _move_into_place(download, target)
        finally:
            download.unlink(missing_ok=True)
        try:
            if ref.is_dir:
                stamp_folder(ref, target, hashes)
            else:
                stamp_file(ref, target, inode)
        except OSError:  # the copy is verified; without its stamp the next load hashes or fetches it again
            log.warning("could not stamp the cached copy of artifact %s at %s", ref.url, target, exc_info=True)
        return target

    def remove(self, ref: ArtifactRef) -> None:
        """Delete the stored object; an object already gone is not an error."""
        fs, path = url_to_fs(ref.url)
        with suppress(FileNotFoundError):
            fs.rm(path)

    def _upload(self, fs: AbstractFileSystem, root: str, source: Path, filename: str, is_dir: bool) -> Stored:
        size = source.stat().st_size
        sha256 = hash_file(source)
        name = f"{filename}.tar" if is_dir else filename
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
                copy_hashing(src, dst, advance)
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
            digest, _ = copy_hashing(src, dst, advance)
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


def _move_into_place(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError:
        # Another process fetching the same artifact got there first; its copy is just as good.
        if not target.exists():
            raise


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
