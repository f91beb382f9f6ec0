"""A stand-in for the one `clearml` call Preprocess files make (StorageManager.get_local_copy), over fsspec.

Installed as the module ``clearml`` only when the real package is not importable, so ClearML-Serving
users' files run unchanged; with ``pip install clearml`` the real one is used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tarfile
import types
import uuid
import zipfile
from pathlib import Path


class StorageManager:
    """The subset of clearml.StorageManager that serving code uses."""

    @staticmethod
    def get_local_copy(remote_url: str, extract_archive: bool = True, **_: object) -> str | None:
        """Download ``remote_url`` (any fsspec URL or local path) once into ferry's cache; its local path."""
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
            fs.get(path, str(partial))
            os.replace(partial, target)
        if extract_archive and _is_archive(target):
            return str(_extract(target))
        return str(target)


def _is_archive(path: Path) -> bool:
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def _extract(archive: Path) -> Path:
    out = archive.with_name(archive.name + "_extracted")
    if out.exists():
        return out
    partial = archive.with_name(f".{uuid.uuid4().hex}")
    shutil.unpack_archive(str(archive), str(partial), format="zip" if zipfile.is_zipfile(archive) else "gztar")
    os.replace(partial, out)
    return out


def install() -> None:
    """Make ``import clearml`` find this stand-in when the real package is absent."""
    if "clearml" in sys.modules or importlib.util.find_spec("clearml") is not None:
        return
    module = types.ModuleType("clearml", __doc__)
    module.StorageManager = StorageManager
    module.__ferry_stand_in__ = True
    sys.modules["clearml"] = module
