"""The Engine protocol and what the engine modules share: reading a model file, unpickling, frames."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ferry.control.spec import EndpointSpec
from ferry.errors import EngineError, FerryError

StatsFn = Callable[[dict], None] | None

Process = Callable[..., Any] | None
"""The user's ``Preprocess.process`` (sync or ``async def``), or None: the model call of custom engines."""


class Engine(Protocol):
    """Runs one endpoint version's model; ``is_async`` means ``run`` returns an awaitable."""

    is_async: bool

    def run(self, data: Any, state: dict, collect: StatsFn) -> Any: ...

    def close(self) -> None: ...


def read_model(spec: EndpointSpec, model_path: Path | None, reader: Callable[[Path], Any]) -> Any:
    """Load ``model_path`` with ``reader``; any failure is an EngineError naming endpoint, file and cause."""
    if model_path is None:
        raise EngineError(
            f"endpoint {spec.key}: the {spec.engine} engine needs a model file, and there is none "
            "(or return the model from Preprocess.load)",
            endpoint=spec.key,
        )
    try:
        return reader(Path(model_path))
    except FerryError:
        raise
    except Exception as exc:
        raise EngineError(
            f"endpoint {spec.key}: cannot load the {spec.engine} model {model_path}: {type(exc).__name__}: {exc}",
            endpoint=spec.key,
            file=str(model_path),
        ) from exc


def unpickle(path: Path) -> Any:
    """A joblib or plain pickle file's object."""
    import joblib

    try:
        return joblib.load(path)
    except Exception as joblib_error:
        try:
            with open(path, "rb") as file:
                return pickle.load(file)
        except Exception:
            cause = f"{type(joblib_error).__name__}: {joblib_error}"
            raise ValueError(f"not a readable joblib or pickle file ({cause})") from joblib_error


def is_frame(data: Any) -> bool:
    """True for a pandas DataFrame (duck-typed: pandas stays optional)."""
    return hasattr(data, "columns") and hasattr(data, "iloc")
