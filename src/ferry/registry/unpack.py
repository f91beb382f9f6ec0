"""The one way ferry unpacks an archive (tar with any compression tarfile reads, or zip): safely.

Used for folder artifacts (``ArtifactStore.fetch``) and by the ClearML ``StorageManager`` stand-in. Every entry
is checked before anything is written: an absolute name, a name that climbs out with ``..``, a link (symbolic
or hard) that points outside the folder, an entry under a link, and a special file (device, pipe, socket) are
refused, naming the archive and the entry. Zip entries that are symbolic links (``external_attr`` mode
``S_IFLNK``, what ``zip --symlinks`` writes) get the same check as tar's: inside the folder they are made,
pointing outside they are refused.

The archive is unpacked into a fresh folder beside the target and moved into place only when all of it is
there, so a refusal or a failure leaves nothing behind. Symbolic links are made last, when every file is
written (no write can go through one), then each is resolved on disk once more: a chain of links that only
leaves the folder when followed is refused too. A hard link is unpacked as a copy of the file it names.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, cast

from ferry.errors import EngineError

CHUNK_SIZE = 8 * 1024 * 1024

FILE, DIR, SYMLINK, HARDLINK = "file", "folder", "link", "hard link"


class UnsafeArchive(EngineError):
    """An archive holds an entry that would land, or point, outside the folder it is unpacked into."""


@dataclass(frozen=True)
class Entry:
    """One archive member, in the archive's own words."""

    name: str
    kind: str  # FILE, DIR, SYMLINK, HARDLINK, or why it is refused ("a device", "a pipe" ...)
    link: str = ""
    executable: bool = False
    open: Callable[[], IO[bytes]] | None = None


@dataclass
class Unpacked:
    """What ``unpack`` wrote, by path relative to the target: files with their sha256, links with their targets."""

    files: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a file that ``unpack`` reads (a zip, or a tar with or without compression)."""
    return path.is_file() and (tarfile.is_tarfile(path) or zipfile.is_zipfile(path))


def unpack(archive: Path, target: Path, label: str, hint: str = "") -> Unpacked:
    """Unpack ``archive`` into the new folder ``target``, all of it or (on any refusal or error) nothing.

    ``label`` names the archive in errors ("artifact s3://...", "archive /path/x.zip"); ``hint`` ends them.
    When another process put ``target`` there first, its copy is kept (it came from the same bytes).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        with _entries(archive, label, hint) as entries:
            unpacked = _extract(entries, scratch, label, hint)
        try:
            os.replace(scratch, target)
        except OSError:
            if not target.exists():
                raise
        return unpacked
    except (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, EOFError, OSError) as exc:
        raise EngineError(f"{label} could not be unpacked: {type(exc).__name__}: {exc}{hint}", archive=label) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def _entries(archive: Path, label: str, hint: str) -> Iterator[list[Entry]]:
    # tar first: a tar header carries a checksum, while a zip's directory is searched for at the end of the file
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, mode="r:*") as tar:
            yield [_tar_entry(tar, member) for member in tar.getmembers()]
        return
    if not zipfile.is_zipfile(archive):
        raise EngineError(f"{label} is neither a tar nor a zip archive{hint}", archive=label)
    with zipfile.ZipFile(archive) as zipped:
        yield [_zip_entry(zipped, info) for info in zipped.infolist()]


def _tar_entry(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Entry:
    if member.isreg():  # extractfile gives None only for what is not a file
        return Entry(
            member.name,
            FILE,
            executable=bool(member.mode & 0o111),
            open=lambda: cast(IO[bytes], tar.extractfile(member)),
        )
    if member.isdir():
        return Entry(member.name, DIR)
    if member.issym():
        return Entry(member.name, SYMLINK, member.linkname)
    if member.islnk():
        return Entry(member.name, HARDLINK, member.linkname)
    kinds = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a pipe"}
    return Entry(member.name, kinds.get(member.type, f"an entry of tar type {member.type!r}"))


def _zip_entry(zipped: zipfile.ZipFile, info: zipfile.ZipInfo) -> Entry:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if info.is_dir() or kind == stat.S_IFDIR:
        return Entry(info.filename, DIR)
    if kind == stat.S_IFLNK:
        return Entry(info.filename, SYMLINK, zipped.read(info).decode("utf-8", "surrogateescape"))
    if kind in (0, stat.S_IFREG):  # 0: written by a tool that records no Unix mode
        return Entry(info.filename, FILE, executable=bool(mode & 0o111), open=lambda: zipped.open(info))
    kinds = {
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFIFO: "a pipe",
        stat.S_IFSOCK: "a socket",
    }
    return Entry(info.filename, kinds.get(kind, f"an entry of unknown type {kind:o}"))


# Checking ----------------------------------------------------------------------------------------------------


def _plan(entries: list[Entry], label: str, hint: str) -> dict[PurePosixPath, Entry]:
    """The entries by normalised name (a later file of the same name replaces an earlier one), all checked."""
    unsafe = _refusal(label, hint)
    plan: dict[PurePosixPath, Entry] = {}
    for entry in entries:
        name = _inside(entry.name, repr(entry.name), unsafe)
        if entry.kind not in (FILE, DIR, SYMLINK, HARDLINK):
            raise unsafe(f"{entry.name!r} is a special file ({entry.kind}): only files, folders and links unpack")
        if name == PurePosixPath("."):
            if entry.kind == DIR:
                continue
            raise unsafe(f"{entry.name!r} is a {entry.kind} in place of the folder itself")
        if entry.kind == SYMLINK:
            _inside((name.parent / entry.link).as_posix(), f"{entry.name!r} -> {entry.link!r}", unsafe)
        elif entry.kind == HARDLINK:
            _inside(entry.link, f"{entry.name!r} -> {entry.link!r}", unsafe)
        earlier = plan.get(name)
        if earlier is not None and earlier.kind != entry.kind:
            raise unsafe(f"{entry.name!r} is both a {earlier.kind} and a {entry.kind}")
        plan[name] = entry
    for name, entry in plan.items():
        through = next((p for p in name.parents if p in plan and plan[p].kind != DIR), None)
        if through is not None:
            what = "link" if plan[through].kind in (SYMLINK, HARDLINK) else plan[through].kind
            raise unsafe(f"{entry.name!r} lies under the {what} {through.as_posix()!r}")
        if entry.kind == HARDLINK:
            source = plan.get(PurePosixPath(posixpath.normpath(entry.link)))
            if source is None or source.kind != FILE:
                raise unsafe(f"{entry.name!r} -> {entry.link!r} is a hard link to no file of the archive")
    return plan


def _inside(path: str, shown: str, unsafe: Callable[[str], UnsafeArchive]) -> PurePosixPath:
    """``path`` normalised, or a refusal when it is absolute or climbs out with ``..``."""
    if path.startswith(("/", "\\")):
        raise unsafe(f"{shown} is an absolute path")
    if "\0" in path:
        raise unsafe(f"{shown} holds a NUL character")
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise unsafe(f"{shown} points outside the folder")
    return PurePosixPath(normal)


def _refusal(label: str, hint: str) -> Callable[[str], UnsafeArchive]:
    def unsafe(why: str) -> UnsafeArchive:
        return UnsafeArchive(f"{label} holds an unsafe entry, so it was not unpacked: {why}{hint}", archive=label)

    return unsafe


# Writing -----------------------------------------------------------------------------------------------------


def _extract(entries: list[Entry], into: Path, label: str, hint: str) -> Unpacked:
    plan = _plan(entries, label, hint)
    unpacked = Unpacked()
    # Folders and files first: no link exists yet in ``into``, so every write lands where its name says. In
    # the archive's order: a compressed tar read backwards is decompressed again from its start.
    for name, entry in plan.items():
        if entry.kind == DIR:
            (into / name).mkdir(parents=True, exist_ok=True)
        elif entry.kind == FILE:
            assert entry.open is not None
            unpacked.files[name.as_posix()] = _write(into / name, entry)
    for name, entry in sorted(plan.items()):
        if entry.kind == HARDLINK:
            source = PurePosixPath(posixpath.normpath(entry.link))
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(into / source, into / name)
            shutil.copymode(into / source, into / name)
            unpacked.files[name.as_posix()] = unpacked.files[source.as_posix()]
    for name, entry in sorted(plan.items()):
        if entry.kind == SYMLINK:
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(entry.link, into / name)
            unpacked.links[name.as_posix()] = entry.link
    root = os.path.realpath(into)
    for link_name, link in unpacked.links.items():
        resolved = os.path.realpath(into / link_name)
        if resolved != root and not resolved.startswith(root + os.sep):
            raise _refusal(label, hint)(f"{link_name!r} -> {link!r} points outside the folder through another link")
    return unpacked


def _write(path: Path, entry: Entry) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o755 if entry.executable else 0o644)
    assert entry.open is not None
    with entry.open() as src, open(fd, "wb") as dst:
        while chunk := src.read(CHUNK_SIZE):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()
