"""The onnxruntime engine: one InferenceSession per endpoint version, fed by input name with the spec's dtypes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

from ferry.control.spec import EndpointSpec, TensorSpec
from ferry.engines.base import Process, read_model
from ferry.engines.tensor import ARGUMENT_WORDS, Feeds, TensorRunner, input_specs, rejected_input, to_feeds
from ferry.errors import EngineError

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
"""aux_config ``graph_optimization_level`` values."""

ONNX_DTYPES = {
    "float": "float32",
    "double": "float64",
    "float16": "float16",
    "bool": "bool",
    "string": "bytes",
    **{f"{s}int{b}": f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64)},
}
"""ONNX Runtime's ``tensor(...)`` element types -> the spec's dtype names."""


class OnnxRuntimeEngine(TensorRunner):
    """Runs an ONNX model in ONNX Runtime; a TensorEngine, so the batcher may stack requests."""

    is_async = False
    releases_gil = True  # the model call runs in C++ without the GIL: instances may be threads

    def __init__(self, spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> None:
        self.endpoint_key = spec.key
        if loaded is not None:
            self.session = loaded
        else:
            options, providers = session_options(spec), session_providers(spec)
            self.session = read_model(
                spec, model_path, lambda path: ort.InferenceSession(str(path), options, providers=providers)
            )
        model_inputs = {i.name: i for i in self.session.get_inputs()}
        self.inputs = tuple(
            _with_model_shape(_with_model_dtype(t, model_inputs, spec), model_inputs)
            for t in input_specs(spec, list(model_inputs))
        )
        self.input_names = tuple(t.name for t in self.inputs)
        missing = [n for n in model_inputs if n not in self.input_names]
        if missing:
            raise EngineError(
                f"endpoint {spec.key}: the model also needs inputs {missing}; name all of {list(model_inputs)}",
                endpoint=spec.key,
            )
        self.output_names = output_names(spec, [o.name for o in self.session.get_outputs()])

    def prepare(self, data: Any) -> Feeds:
        """Preprocess output (a list in spec order or a dict by name) as the model's named arrays."""
        return to_feeds(data, self.inputs, self.endpoint_key)

    def run_tensors(self, feeds: Feeds) -> list[np.ndarray]:
        """One session run; the spec's outputs in order. Arguments the model refuses are the request's fault (422)."""
        try:
            return [np.asarray(out) for out in self.session.run(self.output_names, feeds)]
        except (InvalidArgument, Fail) as exc:
            reason = ort_reason(exc)
            if isinstance(exc, InvalidArgument) or ARGUMENT_WORDS.search(reason):
                raise rejected_input(self.endpoint_key, "onnxruntime", reason) from exc
            raise

    def close(self) -> None:
        self.session = None


def ort_reason(exc: Exception) -> str:
    """ONNX Runtime's message without its status prefix and the C++ source location and condition."""
    text = ORT_PREFIX.sub("", str(exc).strip())
    node, _, status = text.partition(" Status Message: ")
    status = ORT_SOURCE.sub("", status)
    match = ORT_NODE.search(node)
    return f"{match.group(1)} node: {status}" if match and status else text


ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
ORT_NODE = re.compile(r"while running (\w+) node")
ORT_SOURCE = re.compile(r"^\S+:\d+ .*? was false\. ")


def session_options(spec: EndpointSpec) -> ort.SessionOptions:
    """SessionOptions from aux_config: one intra/inter-op thread and every graph optimisation by default."""
    aux = spec.aux_config
    level = str(aux.get("graph_optimization_level", "all")).lower()
    if level not in OPTIMIZATION_LEVELS:
        raise EngineError(
            f"endpoint {spec.key}: aux_config graph_optimization_level={level!r}: use one of "
            f"{', '.join(OPTIMIZATION_LEVELS)}",
            endpoint=spec.key,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(aux.get("intra_op_num_threads", 1))
    options.inter_op_num_threads = int(aux.get("inter_op_num_threads", 1))
    options.graph_optimization_level = OPTIMIZATION_LEVELS[level]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # converted models warn on every batched call otherwise
    return options


def session_providers(spec: EndpointSpec) -> list[str]:
    """aux_config ``providers`` (a list or a comma-separated string), else CUDA when present, then CPU."""
    chosen = spec.aux_config.get("providers")
    if chosen:
        return [p.strip() for p in chosen.split(",")] if isinstance(chosen, str) else list(chosen)
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def output_names(spec: EndpointSpec, model_outputs: list[str]) -> list[str]:
    """The spec's output names (unnamed ones taken by position), else all the model's outputs in order."""
    if not spec.outputs:
        return model_outputs
    names = [t.name or (model_outputs[i] if i < len(model_outputs) else "") for i, t in enumerate(spec.outputs)]
    unknown = [n for n in names if n not in model_outputs]
    if unknown:
        raise EngineError(
            f"endpoint {spec.key}: the model has no output {unknown}; its outputs are {model_outputs}",
            endpoint=spec.key,
        )
    return names


def _with_model_dtype(tensor: TensorSpec, model_inputs: dict[str, Any], spec: EndpointSpec) -> TensorSpec:
    """The input spec with the model's dtype filled in; a name or dtype the model rejects fails here."""
    if tensor.name not in model_inputs:
        raise EngineError(
            f"endpoint {spec.key}: the model has no input {tensor.name!r}; its inputs are {list(model_inputs)}",
            endpoint=spec.key,
        )
    model_dtype = ONNX_DTYPES.get(model_inputs[tensor.name].type.removeprefix("tensor(").removesuffix(")"))
    if tensor.dtype is None:
        return tensor.model_copy(update={"dtype": model_dtype})
    if model_dtype is not None and tensor.dtype != model_dtype:
        raise EngineError(
            f"endpoint {spec.key}: input {tensor.name!r} is {tensor.dtype} in the spec but the model takes "
            f"{model_dtype}: set --input-type {model_dtype}",
            endpoint=spec.key,
        )
    return tensor


def _with_model_shape(tensor: TensorSpec, model_inputs: dict[str, Any]) -> TensorSpec:
    """The input spec with the model's own shape where the spec gives none (symbolic axes become -1)."""
    shape = model_inputs[cast(str, tensor.name)].shape  # ``input_specs`` names every input
    if tensor.shape is not None or not isinstance(shape, (list, tuple)) or not shape:
        return tensor
    axes = tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)
    return tensor.model_copy(update={"shape": axes})
