"""The tensor contract shared by batchable engines: preprocess output -> named arrays -> model -> outputs.

An engine that implements ``prepare``/``run_tensors``/``unwrap`` can be wrapped by the DynamicBatcher:
each request's data is prepared alone, many requests' feeds are stacked along axis 0 into one
``run_tensors`` call, and each request gets its own rows of the outputs back through ``unwrap``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from ferry.control.spec import EndpointSpec, TensorSpec
from ferry.errors import InputMismatch, UserCodeError

Feeds = dict[str, np.ndarray]
"""Model inputs by name, each with the batch on axis 0."""


@runtime_checkable
class TensorEngine(Protocol):
    """An engine whose model call takes named arrays and returns arrays (batchable)."""

    is_async: bool
    input_names: tuple[str, ...]

    def prepare(self, data: Any) -> Feeds: ...

    def run_tensors(self, feeds: Feeds) -> list[np.ndarray]: ...

    def unwrap(self, outputs: list[np.ndarray]) -> Any: ...


class AsyncTensorEngine(Protocol):
    """A tensor engine whose model runs elsewhere (Triton, a ``ferry serve --ray`` replica): ``run_tensors`` is
    awaited, and batching is the other side's."""

    is_async: bool

    async def run_tensors(self, feeds: Feeds) -> list[np.ndarray]: ...


def input_specs(spec: EndpointSpec, default_names: Sequence[str]) -> tuple[TensorSpec, ...]:
    """The endpoint's input specs, named after the model's own inputs where the spec gives no names."""
    if not spec.inputs:
        return tuple(TensorSpec(name=n) for n in default_names)
    return tuple(
        t if t.name else t.model_copy(update={"name": default_names[i] if i < len(default_names) else f"input_{i}"})
        for i, t in enumerate(spec.inputs)
    )


def to_feeds(data: Any, inputs: Sequence[TensorSpec], endpoint: str) -> Feeds:
    """Preprocess output (a dict by name, a list/tuple in spec order, or one array) as typed arrays.

    Each array is checked against its spec here, before the engine runs: a missing input, a wrong rank,
    a fixed axis of another size or values that cannot become the dtype raise InputMismatch (422).
    """
    names = [t.name for t in inputs]
    if isinstance(data, Mapping):
        missing = [n for n in names if n not in data]
        if missing:
            raise InputMismatch(
                f"endpoint {endpoint}: input {missing[0]} is missing: expected inputs {names}, got {_keys(data)}",
                endpoint=endpoint,
            )
        values = [data[n] for n in names]
    elif len(inputs) == 1:
        values = [data]
    elif isinstance(data, (list, tuple)) and len(data) == len(inputs):
        values = list(data)
    else:
        raise InputMismatch(
            f"endpoint {endpoint}: preprocess (or the request body) must return {len(inputs)} inputs {names} "
            "(a dict by name, or a list in that order)",
            endpoint=endpoint,
        )
    # named: ``input_specs`` names every input, and Triton's are named once described
    return {cast(str, t.name): _array(v, t, endpoint) for t, v in zip(inputs, values, strict=True)}


def _keys(data: Mapping) -> str:
    keys = [str(k)[:40] for k in list(data)[:8]]
    return f"{keys}" + (" ..." if len(data) > 8 else "")


def _array(value: Any, spec: TensorSpec, endpoint: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor from the user's code
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=_numpy_dtype(spec.dtype))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputMismatch(
            f"endpoint {endpoint}: input {spec.name} cannot be made {spec.dtype or 'an array'}: {_first_line(exc)}",
            endpoint=endpoint,
        ) from None
    if spec.dtype is None and array.dtype.kind not in NUMERIC_KINDS:
        raise _mismatch(spec, endpoint, f"{array.dtype} values", "numbers")
    if spec.shape is not None and array.ndim == len(spec.shape) - 1:
        array = array[np.newaxis]  # one unbatched example: give it the batch axis
    if spec.shape is not None and not _fits(array.shape, spec.shape):
        raise _mismatch(spec, endpoint, f"{list(array.shape)}", f"shape {list(spec.shape)}")
    return array


NUMERIC_KINDS = "biufc"
"""numpy dtype kinds a model without a declared dtype can take: bool, ints, floats, complex."""


def _fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Same rank and every fixed axis the same size; axis 0 is the batch axis and takes any size."""
    if len(shape) != len(expected):
        return False
    return all(want == -1 or got == want for got, want in zip(shape[1:], expected[1:], strict=True))


def _mismatch(spec: TensorSpec, endpoint: str, got: str, expected: str) -> InputMismatch:
    dtype = f" ({spec.dtype})" if spec.dtype else ""
    return InputMismatch(
        f"endpoint {endpoint}: input {spec.name} expects {expected}{dtype}, got {got}", endpoint=endpoint
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


ARGUMENT_WORDS = re.compile(
    r"shape|size|dimension|rank|broadcast|reshape|dtype|data type|scalar type|index|indices|out of (range|bounds)",
    re.IGNORECASE,
)
"""Words of a model library's error about the arrays it was given (the request's fault, not ferry's)."""


def rejected_input(endpoint: str, engine: str, reason: str) -> InputMismatch:
    """The 422 for arrays that passed the spec but that the model itself refused (say, a sequence too long)."""
    return InputMismatch(
        f"endpoint {endpoint}: the {engine} model rejected its input: {reason}", endpoint=endpoint, stage="model"
    )


def _numpy_dtype(name: str | None) -> Any:
    if name is None:
        return None
    return np.object_ if name == "bytes" else np.dtype(name)


def unwrap_outputs(outputs: list[np.ndarray]) -> Any:
    """One output comes back as its array; several as a list in output order."""
    return outputs[0] if len(outputs) == 1 else outputs


class TensorRunner:
    """``run`` and ``unwrap`` for engines whose model maps named arrays to arrays (onnxruntime, torchscript)."""

    def unwrap(self, outputs: list[np.ndarray]) -> Any:
        """One output as its array, several as a list."""
        return unwrap_outputs(outputs)

    def run(self: TensorEngine, data: Any, state: dict[str, Any], collect: Any) -> Any:
        return self.unwrap(self.run_tensors(self.prepare(data)))


class RowBatching:
    """For one-input models that take rows (sklearn, xgboost, lightgbm): batchable by stacking rows.

    The class using it defines ``predict_rows(array) -> array``.
    """

    input_names = ("input",)
    endpoint_key = ""

    def prepare(self, data: Any) -> Feeds:
        if isinstance(data, (str, bytes, Mapping)) or hasattr(data, "columns") or not hasattr(data, "__len__"):
            raise UserCodeError(
                f"endpoint {self.endpoint_key}: with max_batch_size > 1, preprocess must return rows "
                f"(a list of lists or a 2-D array), not {type(data).__name__}",
                stage="preprocess",
            )
        array = np.asarray(data)
        return {"input": array[np.newaxis] if array.ndim == 1 else array}

    def run_tensors(self, feeds: Feeds) -> list[np.ndarray]:
        return [np.asarray(self.predict_rows(feeds["input"]))]

    def unwrap(self, outputs: list[np.ndarray]) -> Any:
        return outputs[0]

    def predict_rows(self, rows: np.ndarray) -> Any:
        raise NotImplementedError
