"""The sklearn engine: a joblib/pickle model whose ``predict`` (or aux_config ``method``) is called."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ferry.control.spec import EndpointSpec
from ferry.engines.base import Process, StatsFn, read_model, unpickle
from ferry.engines.tensor import RowBatching
from ferry.errors import EngineError


class SklearnEngine(RowBatching):
    is_async = False

    def __init__(self, spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> None:
        self.endpoint_key = spec.key
        self.model = loaded if loaded is not None else read_model(spec, model_path, unpickle)
        method = spec.aux_config.get("method") or "predict"
        self._predict: Any = getattr(self.model, method, None)  # the model's method; None once closed
        if not callable(self._predict):
            raise EngineError(
                f"endpoint {spec.key}: the model ({type(self.model).__name__}) has no method {method!r} "
                "(set aux_config method=predict, predict_proba, ...)",
                endpoint=spec.key,
            )

    def run(self, data: Any, state: dict, collect: StatsFn) -> Any:
        if isinstance(data, (list, tuple)):
            data = np.asarray(data)
        return self._predict(data)

    def predict_rows(self, rows: np.ndarray) -> Any:
        return self._predict(rows)

    def close(self) -> None:
        self.model = self._predict = None
