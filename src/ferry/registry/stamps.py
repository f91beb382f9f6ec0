"""The artifact cache's stamps: each cached copy is hashed when downloaded, then checked by a stat at each load.

Hashing a cached model at every load costs too much (sha256 on this project's 2-core VM: a 500 MiB file in
0.52 s from the page cache, about 1 s per GB, more from a cold disk), so a copy is hashed when it is
downloaded and a stamp beside it, ``.<name>.ferry-stamp``, records what each file looked like then: size,
mtime_ns, ctime_ns, inode, device. A load compares only those (one stat per file); a file whose stamp no
longer matches is hashed again, and the copy fetched again when its bytes are not the artifact's.

ctime cannot be set from user space, so a write that keeps the size and puts the mtime back (`touch -r`)
is still seen. File times tick coarsely (a few ms), so a stamp is trusted only when it was written after
the newest ctime it records (git's "racy clean" rule): a write in the same tick as the stamped state is
then still caught. What a stamp cannot see is a change below the filesystem (a disk's silent corruption, a
raw write to the block device) or a clock set back between two writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from ferry.registry.artifacts import ArtifactRef

CHUNK_SIZE = 8 * 1024 * 1024
STAMP = ".ferry-stamp"

log = logging.getLogger(__name__)

Advance = Callable[[int], None]


def stamp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{STAMP}")


def _stat_key(path: Path) -> list[int]:
    st = os.lstat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _read_stamp(ref: ArtifactRef, target: Path) -> tuple[dict, int] | None:
    """The stamp of ``target`` and when it was written (the filesystem's clock), or None."""
    path = stamp_path(target)
    try:
        written = os.stat(path).st_mtime_ns
        stamp = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return (stamp, written) if isinstance(stamp, dict) and stamp.get("sha256") == ref.sha256 else None


def _write_stamp(target: Path, stamp: dict, newest_ctime_ns: int) -> None:
    # A stamp written in the same clock tick as the newest change it records is not trusted (see above):
    # wait for the tick to pass, a few ms at most, so the next load needs no hashing.
    for _ in range(20):
        partial = target.with_name(f".stamp-{uuid.uuid4().hex}")
        try:
            partial.write_text(json.dumps(stamp, sort_keys=True))
            os.replace(partial, stamp_path(target))
        except OSError:  # a read-only cache: the copy was verified now, and will be hashed at the next load
            log.warning("could not write the stamp of %s; the next load hashes it again", target, exc_info=True)
            return
        finally:
            partial.unlink(missing_ok=True)
        if os.stat(stamp_path(target)).st_mtime_ns > newest_ctime_ns:
            return
        time.sleep(0.005)


def intact(ref: ArtifactRef, target: Path) -> bool:
    """Whether the cached copy at ``target`` still holds the artifact's bytes (re-stamped when it had to hash)."""
    try:
        return _checked(ref, target)
    except OSError:  # a file went away while it was looked at (another fetch discarding the copy): not intact
        return False


def _checked(ref: ArtifactRef, target: Path) -> bool:
    found = _read_stamp(ref, target)
    if ref.is_dir:
        return _folder_intact(ref, target, found)
    if target.is_symlink() or not target.is_file():
        return False
    before = _stat_key(target)
    if found is not None and found[0].get("stat") == before and before[2] < found[1]:
        return True
    if hash_file(target) != ref.sha256 or _stat_key(target) != before:
        return False
    _write_stamp(target, {"sha256": ref.sha256, "stat": before}, before[2])
    return True


def stamp_file(ref: ArtifactRef, target: Path, inode: int) -> None:
    """Stamp the file just verified and moved to ``target`` (another fetch's copy in its place is hashed first)."""
    key = _stat_key(target)
    if key[3] == inode:
        _write_stamp(target, {"sha256": ref.sha256, "stat": key}, key[2])
    else:
        intact(ref, target)


def _folder_state(folder: Path) -> dict[str, list] | None:
    """Every entry under ``folder``: a file as ["file", *stat key], a link as its target, a folder as itself."""
    if folder.is_symlink() or not folder.is_dir():
        return None
    state: dict[str, list] = {}
    for current, dirnames, filenames in os.walk(folder):
        base = Path(current).relative_to(folder)
        for name in dirnames + filenames:
            path, relative = Path(current) / name, (base / name).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                state[relative] = ["link", os.readlink(path)]
            elif stat.S_ISREG(mode):
                state[relative] = ["file", *_stat_key(path)]
            else:
                state[relative] = ["dir" if stat.S_ISDIR(mode) else "other"]
    return state


def _newest_ctime(state: dict[str, list]) -> int:
    return max((entry[3] for entry in state.values() if entry[0] == "file"), default=0)


def stamp_folder(ref: ArtifactRef, target: Path, hashes: dict[str, str]) -> None:
    state = _folder_state(target)
    if state is not None and {k for k, v in state.items() if v[0] == "file"} == set(hashes):
        _write_stamp(target, {"sha256": ref.sha256, "entries": state, "hashes": hashes}, _newest_ctime(state))


def _folder_intact(ref: ArtifactRef, target: Path, found: tuple[dict, int] | None) -> bool:
    # Without a stamp (a cache from before stamps, a crash before it was written) there is nothing to check
    # the files against: the folder is fetched again.
    if found is None:
        return False
    (stamp, written), now = found, _folder_state(target)
    entries, hashes = stamp.get("entries"), stamp.get("hashes")
    if not isinstance(entries, dict) or not isinstance(hashes, dict) or now is None or set(now) != set(entries):
        return False
    changed = [k for k, v in now.items() if v != entries[k] or (v[0] == "file" and v[3] >= written)]
    if not changed:
        return True
    for relative in changed:
        if now[relative][0] != "file" or entries[relative][0] != "file":
            return False
        if hash_file(target / relative) != hashes.get(relative):
            return False
    if _folder_state(target) != now:  # changed while it was hashed
        return False
    _write_stamp(target, {"sha256": ref.sha256, "entries": now, "hashes": hashes}, _newest_ctime(now))
    return True


def discard_cached(target: Path) -> None:
    """Delete a cached copy that no longer matches (a folder is moved aside first: readers see all or nothing)."""
    stamp_path(target).unlink(missing_ok=True)
    if target.is_dir() and not target.is_symlink():
        aside = target.with_name(f".discard-{uuid.uuid4().hex}")
        try:
            os.replace(target, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            target.unlink()


def hash_file(path: Path) -> str:
    with open(path, "rb") as src:
        digest, _ = copy_hashing(src, None, lambda _n: None)
    return digest


def copy_hashing(src: IO[bytes], dst: IO[bytes] | None, advance: Advance) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK_SIZE):
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
        size += len(chunk)
        advance(len(chunk))
    return digest.hexdigest(), size
