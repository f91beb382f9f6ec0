"""Load the user's Preprocess code as a package of its own per endpoint version and wrap its hooks once."""

from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import inspect
import itertools
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ferry.control.spec import EndpointSpec
from ferry.errors import UserCodeError
from ferry.serving.usercode import clearml_shim
from ferry.serving.usercode.endpoint_view import ModelEndpointView

ENTRY_FILE = "preprocess.py"
HOOK_NAMES = ("preprocess", "process", "postprocess", "postprocess_chunk", "load", "unload")
NUMPY_ALIASES = {"float": "float or np.float64", "int": "int or np.int64", "bool": "bool or np.bool_"}
NUMPY_ALIAS_ERROR = re.compile(r"module 'numpy' has no attribute '(\w+)'")
PACKAGE_PREFIX = "ferry_user_"

_COUNTER = itertools.count(1)
_FINDER_LOCK = threading.Lock()


@dataclass(frozen=True)
class Hook:
    """One Preprocess method, resolved once at load time."""

    fn: Callable[..., Any] | None
    """None: the hook is missing."""
    is_async: bool = False


MISSING = Hook(None, False)


@dataclass
class UserCode:
    """The user's Preprocess object and its hooks for one endpoint version."""

    instance: Any | None
    module: ModuleType | None
    preprocess: Hook = MISSING
    process: Hook = MISSING
    postprocess: Hook = MISSING
    postprocess_chunk: Hook = MISSING
    """Applied to each chunk of a streamed answer (an LLM's); ``postprocess`` sees whole answers only."""
    load: Hook = MISSING
    unload: Hook = MISSING
    package: UserPackage | None = None
    """The version's folder as a package; None without user code."""

    def close(self) -> None:
        """Forget this version's modules (sys.modules); call once the version is unloaded. Idempotent."""
        if self.package is not None:
            self.package.close()


def load_user_code(source: Path | None, spec: EndpointSpec, send_request: Callable[..., Any] | None) -> UserCode:
    """Import ``source`` (a preprocess.py file or a folder holding one) and build its Preprocess object.

    Raises UserCodeError naming the file and the cause when the code cannot be imported or instantiated.
    """
    if source is None:
        return UserCode(instance=None, module=None)
    entry = _entry_file(Path(source), spec)
    package = UserPackage(_package_name(spec), entry)
    try:
        module = _import(package, entry, spec)
        instance = _instantiate(module, entry, spec)
    except BaseException:
        package.close()
        raise
    instance.model_endpoint = ModelEndpointView(spec)
    if send_request is not None:
        instance.send_request = send_request
    hooks = {name: _hook(instance, name) for name in HOOK_NAMES}
    return UserCode(instance=instance, module=module, package=package, **hooks)


def _entry_file(source: Path, spec: EndpointSpec) -> Path:
    entry = source / ENTRY_FILE if source.is_dir() else source
    if not entry.is_file():
        raise UserCodeError(f"endpoint {spec.key}: preprocess code {entry} does not exist", stage="import")
    if entry.suffix != ".py":
        raise UserCodeError(
            f"endpoint {spec.key}: cannot import {entry} as Python code: name the file *.py", stage="import"
        )
    return entry


def _hook(instance: Any, name: str) -> Hook:
    fn = getattr(instance, name, None)
    if not callable(fn):
        return MISSING
    return Hook(fn, inspect.iscoroutinefunction(fn))


def _package_name(spec: EndpointSpec) -> str:
    safe = re.sub(r"\W", "_", spec.key)
    return f"{PACKAGE_PREFIX}{safe}_{next(_COUNTER)}"


def _import(package: UserPackage, entry: Path, spec: EndpointSpec) -> ModuleType:
    clearml_shim.install()
    try:
        return package.import_entry(entry)
    except Exception as exc:
        raise _user_error(spec, entry, "failed to import", exc) from exc


# One package per loaded version ----------------------------------------------------------------
#
# The folder becomes the package ``ferry_user_<key>_<n>`` (kept in sys.modules for the version's life, so
# imports inside hooks and pickle find its modules), and every module of that folder gets builtins whose
# ``__import__`` maps the folder's own top-level names to that package: ``import helpers`` in v1's code is
# ``ferry_user_m_1_1.helpers``, in v2's ``ferry_user_m_2_2.helpers``, and other code's ``helpers`` is untouched.

_PACKAGES: dict[str, UserPackage] = {}


class UserPackage:
    """One version's preprocess folder registered as a package of its own until ``close``."""

    def __init__(self, name: str, entry: Path) -> None:
        self.name = name
        self.folder = str(entry.parent.resolve())
        self.local = _local_module_names(Path(self.folder), entry)
        self.builtins = {**vars(builtins), "__import__": self._import}
        self.module = ModuleType(name, f"preprocess folder {self.folder}")
        self.module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        self.module.__spec__.submodule_search_locations = self.module.__path__ = [self.folder]
        _install_finder()
        _forget_finders(self.folder)  # the files may have been written after a finder cached the folder
        _PACKAGES[name] = self
        sys.modules[name] = self.module

    def import_entry(self, entry: Path) -> ModuleType:
        """Import ``entry`` as a module of this package (registered first: dataclasses look it up by name)."""
        stem = entry.stem if entry.stem.isidentifier() else "preprocess"
        name = f"{self.name}.{stem}"
        loader = UserSourceLoader(name, str(entry))
        spec = importlib.util.spec_from_file_location(name, entry, loader=loader)
        assert spec is not None  # None only when no loader is given or found: this one is given
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        setattr(self.module, stem, module)
        loader.exec_module(module)
        return module

    def close(self) -> None:
        """Remove the package and its modules from sys.modules."""
        _PACKAGES.pop(self.name, None)
        prefix = f"{self.name}."
        for key in list(sys.modules):  # list() first: other threads may import meanwhile
            if key == self.name or key.startswith(prefix):
                sys.modules.pop(key, None)
        _forget_finders(self.folder)

    def _import(
        self,
        name: str,
        globals: dict[str, Any] | None = None,
        locals: Any = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> ModuleType:
        top = name.partition(".")[0]
        if level or top not in self.local:
            return builtins.__import__(name, globals, locals, fromlist, level)
        module = builtins.__import__(f"{self.name}.{name}", globals, locals, fromlist, 0)
        # ``import helpers.x`` binds ``helpers``; ``from helpers.x import y`` reads from helpers.x itself.
        return module if fromlist else sys.modules[f"{self.name}.{top}"]


class UserSourceLoader(importlib.machinery.SourceFileLoader):
    """Runs a user module with its version's builtins, so its plain imports resolve inside its package."""

    def exec_module(self, module: ModuleType) -> None:
        package = _PACKAGES.get(module.__name__.partition(".")[0])
        if package is not None:
            module.__builtins__ = package.builtins  # type: ignore[attr-defined]
        super().exec_module(module)


class _UserFinder:
    """Finds a loaded version's modules as the path finder does, to be run by UserSourceLoader."""

    @staticmethod
    def find_spec(fullname: str, path: Sequence[str] | None = None, target: Any = None) -> Any:
        if not fullname.startswith(PACKAGE_PREFIX) or fullname.partition(".")[0] not in _PACKAGES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
            assert spec.origin is not None  # a SourceFileLoader's spec has its file as origin
            spec.loader = UserSourceLoader(fullname, spec.origin)
        return spec


def _install_finder() -> None:
    with _FINDER_LOCK:
        if _UserFinder not in sys.meta_path:
            sys.meta_path.insert(0, _UserFinder)


def _forget_finders(folder: str) -> None:
    for key in list(sys.path_importer_cache):
        if key == folder or key.startswith(folder + os.sep):
            sys.path_importer_cache.pop(key, None)


def _local_module_names(folder: Path, entry: Path) -> frozenset[str]:
    """Names a plain ``import`` in this folder's code finds here first, as with the folder first on sys.path."""
    names = {entry.stem}
    for path in folder.iterdir():
        name = path.stem if path.suffix == ".py" else path.name
        if not name.isidentifier():
            continue
        if path.suffix == ".py" or (path / "__init__.py").is_file():
            names.add(name)
        elif path.is_dir() and any(path.glob("*.py")) and not _importable(name):
            names.add(name)  # a namespace package: it loses to any other module of that name
    return frozenset(name for name in names if name.isidentifier())


def _importable(name: str) -> bool:
    try:
        return name in sys.modules or importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return True


def _instantiate(module: ModuleType, entry: Path, spec: EndpointSpec) -> Any:
    cls = getattr(module, "Preprocess", None)
    if not callable(cls):
        raise UserCodeError(
            f"endpoint {spec.key}: {entry} defines no class named Preprocess "
            "(ferry, like ClearML-Serving, instantiates Preprocess() from the preprocess file)",
            stage="import",
        )
    try:
        return cls()
    except Exception as exc:
        raise _user_error(spec, entry, "Preprocess() raised", exc) from exc


def _user_error(spec: EndpointSpec, entry: Path, what: str, exc: BaseException) -> UserCodeError:
    message = str(exc)
    hint = _numpy_hint(exc)
    if hint:
        message = message.splitlines()[0]
    where = _user_frame(exc, entry)
    text = f"endpoint {spec.key}: {entry} {what}: {type(exc).__name__}: {message}"
    text += f" ({where})" if where else ""
    text += f"; {hint}" if hint else ""
    return UserCodeError(text, stage="import", file=str(entry))


def _numpy_hint(exc: BaseException) -> str | None:
    match = NUMPY_ALIAS_ERROR.search(str(exc)) if isinstance(exc, AttributeError) else None
    if match is None or match.group(1) not in NUMPY_ALIASES:
        return None
    alias = match.group(1)
    return f"np.{alias} was removed in numpy 1.24: use {NUMPY_ALIASES[alias]}"


def _user_frame(exc: BaseException, entry: Path) -> str | None:
    """The innermost traceback line inside the user's code, as 'file line N'."""
    root = entry.parent.resolve()
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if Path(frame.filename).resolve().is_relative_to(root)
    ]
    if not frames:
        return None
    return f"at {Path(frames[-1].filename).name} line {frames[-1].lineno}"
