"""Packing a folder for upload: one reproducible ``.tar``, links to files stored as the files they name."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import NamedTuple

from ferry.errors import InvalidInput


class FolderEntry(NamedTuple):
    """One entry of a folder to upload; ``link`` is the link's target when a link to a file is stored as that file."""

    relative: str
    path: Path
    is_dir: bool
    link: str | None = None


def pack_folder(folder: Path, archive: Path) -> Path:
    """Pack ``folder``'s contents into a reproducible ``.tar``: same tree, same bytes.

    Not compressed: a model folder is mostly weights (safetensors, GGUF) that gzip shrinks by a few percent at
    tens of MB/s, so compressing a multi-GB folder cost minutes at upload and again at each cache fill. A link
    to a file is stored as a regular file holding its target's content (a Hugging Face cache snapshot is all
    such links, into ``../../blobs``); links to folders, broken links and special files are refused by
    ``scan_folder`` before anything is written. Folders uploaded as ``.tar.gz`` before still unpack (``unpack``
    reads any tar).
    """
    entries = scan_folder(folder)
    with open(archive, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            _add_normalised(tar, folder, entry)
    return archive


def scan_folder(folder: Path) -> list[FolderEntry]:
    """``folder``'s entries sorted by relative path, or InvalidInput naming every entry that cannot be stored."""
    entries: list[FolderEntry] = []
    problems: list[str] = []

    def unreadable(exc: OSError) -> None:
        raise InvalidInput(f"cannot upload folder {str(folder)!r}: {exc}") from exc

    for current, dirnames, filenames in os.walk(folder, onerror=unreadable):
        base = Path(current).relative_to(folder)
        for name in dirnames + filenames:
            path, relative = Path(current) / name, (base / name).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                entries.append(FolderEntry(relative, path, stat.S_ISDIR(mode)))
            elif not stat.S_ISLNK(mode):
                problems.append(f"{relative!r} is a special file ({file_kind(mode)})")
            else:
                entry, problem = _followed(path, relative)
                entries += [entry] if entry else []
                problems += [problem] if problem else []
    if problems:
        raise InvalidInput(
            f"cannot upload folder {str(folder)!r}: {'; '.join(sorted(problems))}. A link to a file is stored as "
            "that file; replace a link to a folder with a copy of it (`cp -rL`), and remove or fix special files "
            "and broken links (nothing was uploaded)",
            path=str(folder),
        )
    return sorted(entries)


def dereferenced_links(folder: Path) -> list[tuple[str, str]]:
    """The links to files in ``folder`` that an upload stores as files: (relative path, link target) pairs."""
    return [(entry.relative, entry.link) for entry in scan_folder(folder) if entry.link is not None]


def _followed(path: Path, relative: str) -> tuple[FolderEntry | None, str | None]:
    link = os.readlink(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return None, f"{relative!r} -> {link!r} is a broken link ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return FolderEntry(relative, path, False, link), None
    if stat.S_ISDIR(mode):
        return None, f"{relative!r} -> {link!r} is a link to a folder"
    return None, f"{relative!r} -> {link!r} is a link to a special file ({file_kind(mode)})"


def file_kind(mode: int) -> str:
    kinds = {stat.S_IFIFO: "a pipe", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device"}
    return kinds.get(stat.S_IFMT(mode), "a block device" if stat.S_ISBLK(mode) else "not a file")


def _add_normalised(tar: tarfile.TarFile, folder: Path, entry: FolderEntry) -> None:
    # What tar.gettarinfo gives a file or folder, less the owner and the clock; a link is followed.
    info = tarfile.TarInfo(entry.relative)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if entry.is_dir:
        info.type, info.mode = tarfile.DIRTYPE, stat.S_IMODE(os.lstat(entry.path).st_mode)
        tar.addfile(info)
        return
    # O_NONBLOCK: a file swapped for a pipe since the scan must not hang the upload (it is refused below).
    with open(os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK), "rb") as data:
        found = os.fstat(data.fileno())
        if not stat.S_ISREG(found.st_mode):
            raise InvalidInput(f"cannot upload folder {str(folder)!r}: {entry.relative!r} changed while it was read")
        info.size, info.mode = found.st_size, stat.S_IMODE(found.st_mode)
        tar.addfile(info, data)
