"""Load the user's Preprocess code as an isolated module per endpoint version and wrap its hooks once."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ferry.control.spec import EndpointSpec
from ferry.errors import UserCodeError
from ferry.serving import clearml_shim

ENTRY_FILE = "preprocess.py"
HOOK_NAMES = ("preprocess", "process", "postprocess", "load", "unload")
NUMPY_ALIASES = {"float": "float or np.float64", "int": "int or np.int64", "bool": "bool or np.bool_"}
NUMPY_ALIAS_ERROR = re.compile(r"module 'numpy' has no attribute '(\w+)'")

# sys.path and sys.modules are process-wide: one import at a time keeps each folder's modules its own.
_IMPORT_LOCK = threading.Lock()
_COUNTER = itertools.count(1)


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
    load: Hook = MISSING
    unload: Hook = MISSING


def load_user_code(source: Path | None, spec: EndpointSpec, send_request: Callable[..., Any] | None) -> UserCode:
    """Import ``source`` (a preprocess.py file or a folder holding one) and build its Preprocess object.

    Raises UserCodeError naming the file and the cause when the code cannot be imported or instantiated.
    """
    if source is None:
        return UserCode(instance=None, module=None)
    entry = _entry_file(Path(source), spec)
    module = _import(entry, spec)
    instance = _instantiate(module, entry, spec)
    instance.model_endpoint = spec
    if send_request is not None:
        instance.send_request = send_request
    hooks = {name: _hook(instance, name) for name in HOOK_NAMES}
    return UserCode(instance=instance, module=module, **hooks)


def _entry_file(source: Path, spec: EndpointSpec) -> Path:
    entry = source / ENTRY_FILE if source.is_dir() else source
    if not entry.is_file():
        raise UserCodeError(f"endpoint {spec.key}: preprocess code {entry} does not exist", stage="import")
    return entry


def _hook(instance: Any, name: str) -> Hook:
    fn = getattr(instance, name, None)
    if not callable(fn):
        return MISSING
    return Hook(fn, inspect.iscoroutinefunction(fn))


def _module_name(spec: EndpointSpec) -> str:
    safe = re.sub(r"\W", "_", spec.key)
    return f"ferry_user_{safe}_{next(_COUNTER)}"


def _import(entry: Path, spec: EndpointSpec) -> ModuleType:
    name = _module_name(spec)
    module_spec = importlib.util.spec_from_file_location(name, entry)
    if module_spec is None or module_spec.loader is None:
        raise UserCodeError(f"endpoint {spec.key}: cannot import {entry} as Python code", stage="import")
    module = importlib.util.module_from_spec(module_spec)
    clearml_shim.install()
    with _IMPORT_LOCK, _isolated(entry):
        # Registered while it runs: dataclasses and typing look the defining module up by name.
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise _user_error(spec, entry, "failed to import", exc) from exc
        finally:
            sys.modules.pop(name, None)
    return module


@contextmanager
def _isolated(entry: Path) -> Iterator[None]:
    """Let the modules beside ``entry`` win for plain ``import x``, then forget them once imported."""
    folder = str(entry.parent.resolve())
    names = _local_module_names(entry)
    saved = _take_modules(names)
    sys.path.insert(0, folder)
    importlib.invalidate_caches()  # the files may have been written after the finders cached the folder
    try:
        yield
    finally:
        with suppress(ValueError):  # the user's code may have edited sys.path itself
            sys.path.remove(folder)
        sys.path_importer_cache.pop(folder, None)
        _take_modules(names)
        sys.modules.update(saved)


def _local_module_names(entry: Path) -> set[str]:
    names = set()
    for path in entry.parent.iterdir():
        if path.suffix == ".py" and path.name != entry.name:
            names.add(path.stem)
        elif path.is_dir() and (path / "__init__.py").is_file():
            names.add(path.name)
    return {name for name in names if name.isidentifier()}


def _take_modules(names: set[str]) -> dict[str, ModuleType]:
    """Remove (and return) the modules named ``names`` and their submodules from sys.modules."""
    taken = [key for key in sys.modules if key.split(".", 1)[0] in names]
    return {key: sys.modules.pop(key) for key in taken}


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
