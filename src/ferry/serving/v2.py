"""The Open Inference Protocol (KServe V2) over ferry's endpoints: datatypes, tensor signatures, metadata.

No transport here: ``rest/v2.py`` and ``grpc/`` turn their wire formats into named numpy arrays and call
``DataPlane.infer_tensors``, which checks them against the endpoint's ``Signature`` and runs only its model.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ferry.control.spec import TensorSpec
from ferry.engines.tensor import Feeds, RowBatching, TensorEngine
from ferry.errors import EngineError, FerryError, InputMismatch, InvalidInput
from ferry.serving.request.pipeline import EndpointRuntime

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    **{f"UINT{b}": np.dtype(f"uint{b}") for b in (8, 16, 32, 64)},
    **{f"INT{b}": np.dtype(f"int{b}") for b in (8, 16, 32, 64)},
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
"""V2 datatype -> numpy dtype (BYTES elements are ``bytes`` in an object array)."""

SPEC_DATATYPES: dict[str, str] = {
    ("bytes" if name == "BYTES" else dtype.name): name for name, dtype in DATATYPES.items()
}
"""The spec's dtype names (``control/spec.py``) -> V2 datatypes."""

ROW_INPUT, ROW_OUTPUT = "input__0", "output__0"
"""What row engines (sklearn, xgboost, lightgbm) call their one input and output when the spec names none:
Triton's FIL/sklearn convention, so clients written for Triton work unchanged."""

NUMERIC_KINDS = "biuf"


def datatype(array: np.ndarray) -> str:
    """The V2 datatype of ``array`` (strings and objects are BYTES); EngineError for one V2 cannot carry."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    name = SPEC_DATATYPES.get(array.dtype.name)
    if name is None:
        raise EngineError(f"the model answered {array.dtype} values, which the V2 protocol has no datatype for")
    return name


@dataclass(frozen=True)
class Signature:
    """The tensors one endpoint version takes and gives over V2, and the engine's own input names."""

    inputs: tuple[TensorSpec, ...]
    """V2 names, the spec's dtype (None: any numeric datatype) and shape (None: any; axis 0 is the batch)."""
    outputs: tuple[TensorSpec, ...]
    feed_names: tuple[str, ...]
    """The engine's name for each input, in ``inputs`` order (row engines call theirs "input")."""

    def input_names(self) -> list[str | None]:
        """None for an input a Triton spec leaves unnamed (its engine's ``inputs``)."""
        return [t.name for t in self.inputs]

    def output_names(self, count: int) -> list[str]:
        """Names for ``count`` model outputs: the signature's, then ``output__<i>`` for any beyond them."""
        names = [cast(str, t.name) for t in self.outputs]  # named by ``_output_spec`` and ``_row_signature``
        return names[:count] + [f"output__{i}" for i in range(len(names), count)]


_signatures: weakref.WeakKeyDictionary[EndpointRuntime, Signature] = weakref.WeakKeyDictionary()


def signature(runtime: EndpointRuntime) -> Signature:
    """The endpoint's tensors (once per runtime): the spec's names, types and sizes where given, else the engine's.

    InvalidInput (400) for an engine that runs user code rather than a model on tensors."""
    found = _signatures.get(runtime)
    if found is None:
        found = _signatures[runtime] = _signature(runtime)
    return found


def _signature(runtime: EndpointRuntime) -> Signature:
    spec, engine = runtime.spec, runtime.engine
    remote = getattr(engine, "v2_signature", None)  # a model run elsewhere (ferry serve --ray) sends its own
    if isinstance(remote, Signature):
        return remote
    if isinstance(remote, FerryError):
        raise remote
    if isinstance(engine, RowBatching):
        return _row_signature(runtime)
    if not isinstance(engine, TensorEngine):
        raise InvalidInput(
            f"endpoint {spec.key}: the {spec.engine} engine runs its Preprocess code, not a model on tensors, so "
            f"the V2 protocol cannot call it: POST /serve/{spec.key} instead",
            endpoint=spec.key,
        )
    inputs = tuple(getattr(engine, "inputs", None) or (TensorSpec(name=n) for n in engine.input_names))
    return Signature(tuple(inputs), _tensor_outputs(runtime), tuple(engine.input_names))


def _row_signature(runtime: EndpointRuntime) -> Signature:
    """One 2-D input and one output; named after Triton's FIL convention when the spec names none."""
    spec = runtime.spec
    given = spec.inputs[0] if spec.inputs else TensorSpec()
    shape = given.shape if given.shape is not None and len(given.shape) == 2 else None
    if given.shape is not None and len(given.shape) == 1:
        shape = (-1, given.shape[0])  # features only: the batch axis is implied
    inputs = (TensorSpec(name=given.name or ROW_INPUT, dtype=given.dtype, shape=shape or (-1, -1)),)
    out = spec.outputs[0] if spec.outputs else TensorSpec()
    method = spec.aux_config.get("method") or "predict"
    output = TensorSpec(
        name=out.name or ROW_OUTPUT,
        dtype=out.dtype or _row_output_dtype(runtime.engine, method),
        shape=out.shape or ((-1,) if method == "predict" else (-1, -1)),
    )
    return Signature(inputs, (output,), ("input",))


def _row_output_dtype(engine: Any, method: str) -> str:
    """What a row model answers: a classifier's label type, else floats (xgboost's float32, others' float64)."""
    classes = getattr(getattr(engine, "model", None), "classes_", None)
    if method == "predict" and classes is not None:
        kind = np.asarray(classes).dtype
        return "bytes" if kind.kind in "OSU" else kind.name
    return "float32" if type(engine).__name__.startswith("XGBoost") else "float64"


def _tensor_outputs(runtime: EndpointRuntime) -> tuple[TensorSpec, ...]:
    """The spec's outputs, else the model's own (ONNX sessions list theirs), else one ``output__0``."""
    spec, engine = runtime.spec, runtime.engine
    model_outputs = {o.name: o for o in _session_outputs(engine)}
    names = list(getattr(engine, "output_names", None) or ()) or [t.name for t in spec.outputs if t.name]
    names = names or list(model_outputs) or [ROW_OUTPUT]
    given = {t.name: t for t in spec.outputs if t.name}
    return tuple(_output_spec(name, given.get(name), model_outputs.get(name)) for name in names)


def _session_outputs(engine: Any) -> list[Any]:
    session: Any = getattr(engine, "session", None)
    return list(session.get_outputs()) if hasattr(session, "get_outputs") else []


def _output_spec(name: str, given: TensorSpec | None, model: Any) -> TensorSpec:
    dtype, shape = (given.dtype, given.shape) if given is not None else (None, None)
    if model is not None:
        from ferry.engines.onnxruntime import ONNX_DTYPES  # only ONNX sessions list their outputs

        dtype = dtype or ONNX_DTYPES.get(str(model.type).removeprefix("tensor(").removesuffix(")"))
        if shape is None and isinstance(model.shape, (list, tuple)) and model.shape:
            shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in model.shape)
    return TensorSpec(name=name, dtype=dtype, shape=shape)


# requests ---------------------------------------------------------------------------------------


def feeds(runtime: EndpointRuntime, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> Feeds:
    """``inputs`` checked against the endpoint's signature, keyed by the engine's own names.

    InputMismatch (422) for an unknown or missing input, a wrong datatype or shape, or an unknown output."""
    sig, key = signature(runtime), runtime.key
    expected = sig.input_names()
    unknown = [n for n in inputs if n not in expected]
    missing = [n for n in expected if n not in inputs]
    if unknown or missing:
        problem = f"has no input {unknown[0]!r}" if unknown else f"needs input {missing[0]!r}"
        raise InputMismatch(f"endpoint {key} {problem}: its inputs are {expected} (GET /v2/models/{runtime.spec.name})")
    if outputs:
        check_outputs(runtime, outputs)
    # every input name is in ``inputs`` (no ``missing`` above), so none is None here
    checked = {
        feed: _checked(inputs[cast(str, t.name)], t, key) for t, feed in zip(sig.inputs, sig.feed_names, strict=True)
    }
    _check_rows(runtime, checked)
    return checked


def _check_rows(runtime: EndpointRuntime, checked: Feeds) -> None:
    """An endpoint whose aux config sets max_batch_size takes at most that many rows a request (as Triton's own
    limit); one batching by default runs a larger request alone."""
    policy = runtime.batcher.policy if runtime.batcher is not None else None
    limit = policy.max_batch_size if policy is not None and not policy.implicit else None
    rows = max((a.shape[0] for a in checked.values() if a.ndim), default=0)
    if limit is not None and rows > limit:
        raise InputMismatch(
            f"endpoint {runtime.key} takes at most {limit} rows a request (aux config max_batch_size), got {rows}: "
            "send them in smaller requests"
        )


def check_outputs(runtime: EndpointRuntime, outputs: Sequence[str]) -> None:
    """InputMismatch (422) when the request asks for an output the endpoint does not give."""
    known = [t.name for t in signature(runtime).outputs]
    unknown = [n for n in outputs if n not in known]
    if unknown:
        raise InputMismatch(f"endpoint {runtime.key} has no output {unknown[0]!r}: its outputs are {known}")


def _checked(array: np.ndarray, spec: TensorSpec, key: str) -> np.ndarray:
    got = datatype(array) if array.dtype.kind in NUMERIC_KINDS + "OSU" else str(array.dtype)
    if spec.dtype is not None and got != SPEC_DATATYPES.get(spec.dtype):
        raise InputMismatch(
            f"endpoint {key}: input {spec.name} takes datatype {SPEC_DATATYPES.get(spec.dtype)}, got {got}"
        )
    if spec.dtype is None and array.dtype.kind not in NUMERIC_KINDS:
        raise InputMismatch(f"endpoint {key}: input {spec.name} takes numbers (BOOL, INT*, UINT*, FP*), got {got}")
    if spec.shape is not None and not _fits(array.shape, spec.shape):
        raise InputMismatch(
            f"endpoint {key}: input {spec.name} takes shape {list(spec.shape)} (-1: any size), got {list(array.shape)}"
        )
    return array


def _fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Same rank, every fixed axis the same size; axis 0 is the batch axis (as for /serve) and takes any size."""
    if len(shape) != len(expected):
        return False
    return all(want == -1 or got == want for got, want in zip(shape[1:], expected[1:], strict=True))


def named_outputs(
    runtime: EndpointRuntime, arrays: Sequence[np.ndarray], outputs: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The model's outputs by name, only those asked for (all when ``outputs`` is empty), in model order."""
    arrays = [np.asarray(a) for a in arrays]
    named = dict(zip(signature(runtime).output_names(len(arrays)), arrays, strict=True))
    return {n: named[n] for n in outputs} if outputs else named


# metadata ---------------------------------------------------------------------------------------


def metadata(runtime: EndpointRuntime, versions: Sequence[str] | None = None) -> dict[str, Any]:
    """V2 model metadata: name, versions, platform (the engine), inputs and outputs with -1 for variable axes."""
    spec, sig = runtime.spec, signature(runtime)
    return {
        "name": spec.name,
        "versions": list(versions) if versions is not None else ([spec.version] if spec.version else []),
        "platform": spec.engine,
        "inputs": [_tensor_metadata(t, "FP32") for t in sig.inputs],
        "outputs": [_tensor_metadata(t, "FP32") for t in sig.outputs],
    }


def _tensor_metadata(tensor: TensorSpec, default: str) -> dict[str, Any]:
    """A tensor's metadata; an input without a declared dtype takes any number, and FP32 is what to send."""
    datatype_ = SPEC_DATATYPES.get(tensor.dtype, default) if tensor.dtype else default
    return {"name": tensor.name, "datatype": datatype_, "shape": list(tensor.shape) if tensor.shape else [-1]}
