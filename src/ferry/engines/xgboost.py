"""The xgboost engine: a native JSON/UBJ model file (any name, sniffed) or a pickled xgboost model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import xgboost

from ferry.control.spec import EndpointSpec
from ferry.engines.base import Process, StatsFn, is_frame, read_model, unpickle
from ferry.engines.tensor import RowBatching


class XGBoostEngine(RowBatching):
    is_async = False

    def __init__(self, spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> None:
        self.endpoint_key = spec.key
        self.model = loaded if loaded is not None else read_model(spec, model_path, read_xgboost)

    def run(self, data: Any, state: dict, collect: StatsFn) -> Any:
        if isinstance(self.model, xgboost.Booster):
            return self.model.predict(as_dmatrix(data))
        if isinstance(data, xgboost.DMatrix):
            return self.model.get_booster().predict(data)
        return self.model.predict(data if is_frame(data) else np.asarray(data))

    def predict_rows(self, rows: np.ndarray) -> Any:
        return self.run(rows, {}, None)

    def close(self) -> None:
        self.model = None


def as_dmatrix(data: Any) -> xgboost.DMatrix:
    if isinstance(data, xgboost.DMatrix):
        return data
    return xgboost.DMatrix(data if is_frame(data) else np.asarray(data))


def read_xgboost(path: Path) -> Any:
    """A Booster from JSON or UBJ content (whatever the file name), else a pickled model."""
    with open(path, "rb") as file:
        head = file.read(64).lstrip()
    if head[:1] != b"{":
        try:
            return unpickle(path)
        except ValueError as exc:
            raise ValueError(f"not an xgboost JSON or UBJ model, and {exc}") from exc
    # UBJSON objects also open with '{', but a type marker follows it instead of a quote.
    suffix = ".json" if head[1:].lstrip()[:1] in (b'"', b"}") else ".ubj"
    return load_booster(path, suffix)


def load_booster(path: Path, suffix: str) -> xgboost.Booster:
    """Some xgboost versions pick the format by extension: give the file the right one if it lacks it."""
    if path.suffix.lower() == suffix:
        return xgboost.Booster(model_file=str(path))
    with tempfile.TemporaryDirectory(prefix="ferry-xgb-") as folder:
        named = Path(folder) / f"model{suffix}"
        try:
            named.symlink_to(path.resolve())
        except OSError:
            named.write_bytes(path.read_bytes())
        return xgboost.Booster(model_file=str(named))
