"""A stand-in for the one `clearml` call Preprocess files make (StorageManager.get_local_copy), over fsspec.

Installed as the module ``clearml`` only when the real package is not importable, so ClearML-Serving
users' files run unchanged; with ``pip install clearml`` the real one is used.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import types
import uuid
from pathlib import Path

from ferry.registry.unpack import is_archive, unpack

ARCHIVE_SUFFIXES = (".zip", ".tgz", ".tar.gz", ".tar")
"""What get_local_copy unpacks: ClearML's own three, by name, and a plain tar."""


class StorageManager:
    """The subset of clearml.StorageManager that serving code uses."""

    @staticmethod
    def get_local_copy(remote_url: str, extract_archive: bool = True, **_: object) -> str | None:
        """Download ``remote_url`` (any fsspec URL or local path) once into ferry's cache; its local path.

        An archive named as one (``.zip``, ``.tgz``, ``.tar.gz``, as ClearML decides, and ``.tar``; a ``.pt`` or
        ``.npz`` file, zips inside, stays a file) is unpacked beside it and the folder's path returned, through
        ferry's one safe unpacker: an entry that would land or point outside that folder (absolute, ``..``,
        a link out), or a device or pipe, raises EngineError naming the archive and the entry.
        """
        from fsspec.core import url_to_fs

        from ferry.settings import Settings

        folder = Settings().cache_path() / "storage-manager" / hashlib.sha256(remote_url.encode()).hexdigest()[:24]
        target = folder / (Path(remote_url.rstrip("/")).name or "download")
        if not target.exists():
            fs, path = url_to_fs(remote_url)
            if not fs.exists(path):
                return None  # what clearml returns for a missing object
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".{uuid.uuid4().hex}"
            try:
                fs.get(path, str(partial))
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        if extract_archive and target.name.lower().endswith(ARCHIVE_SUFFIXES) and is_archive(target):
            return str(_extract(target, remote_url))
        return str(target)


def _extract(archive: Path, remote_url: str) -> Path:
    out = archive.with_name(archive.name + "_extracted")
    if not out.exists():
        unpack(archive, out, f"archive {remote_url}")
    return out


def install() -> None:
    """Make ``import clearml`` find this stand-in when the real package is absent."""
    if "clearml" in sys.modules or importlib.util.find_spec("clearml") is not None:
        return
    module = types.ModuleType("clearml", __doc__)
    module.__dict__.update(StorageManager=StorageManager, __ferry_stand_in__=True)  # a ModuleType names no fields
    # A spec, as every imported module has: importlib.util.find_spec("clearml") (transformers asks it while
    # loading a GGUF file) raises ValueError for a module in sys.modules without one.
    module.__spec__ = importlib.machinery.ModuleSpec("clearml", None)
    sys.modules["clearml"] = module
