"""Classic models compiled to ONNX (aux ``compile=onnx``): converted at load, verified, served by ONNX Runtime."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ferry.control.spec import EndpointSpec
from ferry.engines.base import Engine, StatsFn
from ferry.engines.tensor import RowBatching

log = logging.getLogger(__name__)

SAMPLE_ROWS = 64
"""Seeded random rows the compiled model is checked on when the endpoint has no ``warmup`` rows."""

DEFAULT_TOLERANCE = 1e-4
INSTALL = "pip install 'ferry[compile]'"

Pick = Callable[[list[np.ndarray]], np.ndarray]
"""Takes the original engine's answer out of the ONNX graph's outputs."""


class NotCompiled(Exception):
    """Why a model is served by its own engine instead of ONNX Runtime."""


class CompiledEngine(RowBatching):
    """The ONNX graph of a classic model, answering as its original engine does (labels, probabilities, values)."""

    is_async = False
    releases_gil = True  # the model call runs in C++ without the GIL: instances may be threads

    def __init__(self, original: Any, session: Any, pick: Pick, n_features: int) -> None:
        self.original, self.session, self.pick, self.n_features = original, session, pick, n_features
        self.endpoint_key = original.endpoint_key
        self.input_name = session.get_inputs()[0].name

    def run(self, data: Any, state: dict, collect: StatsFn) -> Any:
        rows = _rows(data, self.n_features)
        if rows is None:  # frames, DMatrix, wrong shapes: the original answers (or fails) exactly as before
            return self.original.run(data, state, collect)
        return self.predict_rows(rows)

    def predict_rows(self, rows: np.ndarray) -> Any:
        if rows.ndim != 2 or rows.shape[1] != self.n_features:  # the original's own error for the wrong width
            return self.original.predict_rows(rows)
        return self.pick(self.session.run(None, {self.input_name: np.asarray(rows, dtype=np.float32)}))

    def close(self) -> None:
        self.original.close()
        self.session = None


def compile_engine(spec: EndpointSpec, original: Engine) -> Engine:
    """``original`` compiled to ONNX when its answers match on sample rows; else ``original``, with a warning why."""
    try:
        engine, difference, n_rows = _compile(spec, original)
    except NotCompiled as exc:
        log.warning("endpoint %s: not compiled to ONNX, serving the %s model as it is: %s", spec.key, spec.engine, exc)
        return original
    except Exception as exc:  # a converter's own failure must never fail the load
        log.warning(
            "endpoint %s: not compiled to ONNX, serving the %s model as it is: the converter failed: %s: %s",
            spec.key,
            spec.engine,
            type(exc).__name__,
            str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "",
        )
        return original
    log.info("endpoint %s: compiled to ONNX, max abs difference %.3g on %d rows", spec.key, difference, n_rows)
    return engine


def _compile(spec: EndpointSpec, original: Any) -> tuple[CompiledEngine, float, int]:
    model = original.model
    n_features = _n_features(model)
    method = spec.aux_config.get("method") or "predict"
    if method not in ("predict", "predict_proba"):
        raise NotCompiled(f"method {method!r} has no ONNX counterpart (predict and predict_proba do)")
    session = _session(_convert(spec.engine, model, n_features))
    rows = _sample_rows(spec.aux_config.get("warmup"), n_features)
    expected = np.asarray(original.predict_rows(rows))
    outputs = session.run(None, {session.get_inputs()[0].name: rows.astype(np.float32)})
    pick = _picker(expected, outputs)
    tolerance = float(spec.aux_config.get("compile_tolerance", DEFAULT_TOLERANCE))
    proba = _probabilities(model, rows) if expected.dtype.kind != "f" else None
    no_ties = np.zeros(len(rows), dtype=bool)
    difference = _difference(expected, pick(outputs), tolerance, no_ties if proba is None else _ties(proba, tolerance))
    if proba is not None:  # a classifier's labels agree: its probabilities must too
        difference = _difference(proba, _picker(proba, outputs)(outputs), tolerance, no_ties)
    return CompiledEngine(original, session, pick, n_features), difference, len(rows)


def _n_features(model: Any) -> int:
    for name in ("n_features_in_", "num_features", "num_feature"):  # sklearn API, xgboost and lightgbm Boosters
        value = getattr(model, name, None)
        value = value() if callable(value) else value
        if isinstance(value, (int, np.integer)):
            return int(value)
    raise NotCompiled(f"cannot tell how many features {type(model).__name__} takes")


def _convert(engine: str, model: Any, n_features: int) -> Any:
    """The ONNX ModelProto of ``model``, whose one input ``input`` takes float32 rows."""
    try:
        if engine == "sklearn":
            return _convert_sklearn(model, n_features)
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError as exc:
        raise NotCompiled(f"compile=onnx needs skl2onnx and onnxmltools: {INSTALL} ({exc})") from exc
    types = [("input", FloatTensorType([None, n_features]))]
    if engine == "xgboost":
        return onnxmltools.convert_xgboost(model, initial_types=types, target_opset=15)
    return onnxmltools.convert_lightgbm(model, initial_types=types, target_opset=15, zipmap=False)


def _convert_sklearn(model: Any, n_features: int) -> Any:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from skl2onnx.common.exceptions import MissingShapeCalculator

    options = {id(model): {"zipmap": False}} if hasattr(model, "classes_") else None
    try:
        return to_onnx(model, initial_types=[("input", FloatTensorType([None, n_features]))], options=options)
    except MissingShapeCalculator as exc:
        raise NotCompiled(f"skl2onnx does not know {type(model).__name__}") from exc


def _session(onnx_model: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3  # a converted lightgbm model warns on every batched call otherwise
    return ort.InferenceSession(onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _sample_rows(warmup: Any, n_features: int) -> np.ndarray:
    """The endpoint's warmup rows when they are rows of this model's width, else seeded standard-normal rows."""
    rows = _rows(warmup, n_features) if warmup is not None else None
    if rows is not None and len(rows):
        return rows.astype(np.float64)
    return np.random.default_rng(0).normal(size=(SAMPLE_ROWS, n_features))


def _rows(data: Any, n_features: int) -> np.ndarray | None:
    """``data`` as a 2-D numeric array n_features wide, or None when it is anything else."""
    if not isinstance(data, (list, tuple, np.ndarray)):
        return None
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.ndim == 2 and array.shape[1] == n_features else None


def _picker(expected: np.ndarray, outputs: list[np.ndarray]) -> Pick:
    """The first ONNX output (as it is, flattened, or its class-1 column) shaped and typed like ``expected``."""
    wants_float = expected.dtype.kind == "f"
    for index, output in enumerate(outputs):
        output = np.asarray(output)
        if (output.dtype.kind == "f") != wants_float:
            continue
        for shape in (_same, _flat, _positive):
            if shape(output).shape == expected.shape:
                return _caster(index, shape, expected.dtype)
    found = ", ".join(f"{np.asarray(o).dtype}{list(np.shape(o))}" for o in outputs)
    raise NotCompiled(f"no ONNX output matches the model's answer {expected.dtype}{list(expected.shape)} ({found})")


def _same(output: np.ndarray) -> np.ndarray:
    return output


def _flat(output: np.ndarray) -> np.ndarray:
    return output.reshape(-1) if output.ndim == 2 and output.shape[1] == 1 else output


def _positive(output: np.ndarray) -> np.ndarray:
    """A binary classifier's probabilities as the probability of class 1 (an xgboost/lightgbm Booster's answer)."""
    return output[:, 1] if output.ndim == 2 and output.shape[1] == 2 else output


def _caster(index: int, shape: Callable[[np.ndarray], np.ndarray], dtype: np.dtype) -> Pick:
    return lambda outputs: shape(np.asarray(outputs[index])).astype(dtype, copy=False)


def _probabilities(model: Any, rows: np.ndarray) -> np.ndarray | None:
    """A classifier's class probabilities for ``rows`` (2-D), or None for a model without them."""
    proba = getattr(model, "predict_proba", None)
    if not callable(proba):
        return None
    answer = np.asarray(proba(rows))
    return answer if answer.ndim == 2 and answer.shape[1] > 1 else None


def _ties(proba: np.ndarray, tolerance: float) -> np.ndarray:
    """Rows whose two likeliest classes are within ``tolerance``: either label is right (say, 50 of 100 trees)."""
    top = np.sort(proba, axis=1)
    return top[:, -1] - top[:, -2] <= tolerance


def _difference(expected: np.ndarray, got: np.ndarray, tolerance: float, ties: np.ndarray) -> float:
    """The largest absolute difference; raises NotCompiled when labels differ or it is over ``tolerance``."""
    if expected.dtype.kind != "f":
        wrong = int(np.sum((expected != got) & ~ties))
        if wrong:
            raise NotCompiled(f"its labels differ from the original's on {wrong} of {len(expected)} sample rows")
        return 0.0
    difference = float(np.max(np.abs(expected.astype(np.float64) - got.astype(np.float64)), initial=0.0))
    if not difference <= tolerance:
        raise NotCompiled(
            f"max abs difference {difference:.3g} from the original on {len(expected)} sample rows is over "
            f"compile_tolerance={tolerance:g} (raise compile_tolerance to accept it)"
        )
    return difference
