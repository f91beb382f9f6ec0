"""The lightgbm engine: a text model file (any name) or a pickled Booster/LGBMModel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm
import numpy as np

from ferry.control.spec import EndpointSpec
from ferry.engines.base import Process, StatsFn, is_frame, read_model, unpickle
from ferry.engines.tensor import RowBatching


class LightGBMEngine(RowBatching):
    is_async = False

    def __init__(self, spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> None:
        self.endpoint_key = spec.key
        self.model = loaded if loaded is not None else read_model(spec, model_path, read_lightgbm)

    def run(self, data: Any, state: dict, collect: StatsFn) -> Any:
        return self.model.predict(data if is_frame(data) else np.asarray(data))

    def predict_rows(self, rows: np.ndarray) -> Any:
        return self.model.predict(rows)

    def close(self) -> None:
        self.model = None


def read_lightgbm(path: Path) -> Any:
    with open(path, "rb") as file:
        head = file.read(16)
    if head.startswith(b"tree"):
        return lightgbm.Booster(model_file=str(path))
    try:
        return unpickle(path)
    except ValueError as exc:
        raise ValueError(f"not a LightGBM text model, and {exc}") from exc
