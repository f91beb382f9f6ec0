"""Triton's ModelConfig (model_config.proto): checked for the triton engine, mapped onto ferry's keys for the rest."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from ferry.errors import InvalidInput

DataType = Literal[
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_UINT16",
    "TYPE_UINT32",
    "TYPE_UINT64",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_FP32",
    "TYPE_FP64",
    "TYPE_STRING",
    "TYPE_BF16",
]
Message = dict[str, Any]
"""A nested message ferry does not look into: Triton checks it when it loads the model."""

REPEATED = {
    *("input", "output", "batch_input", "batch_output", "instance_group", "model_warmup", "dims", "dim", "shape"),
    *("preferred_batch_size", "gpus", "profile", "secondary_devices", "resources", "step", "agents", "buckets"),
    *("metric_control", "control", "control_input", "state", "initial_state", "int32_false_true"),
    *("fp32_false_true", "bool_false_true", "op_library_filename", "gpu_execution_accelerator"),
    *("cpu_execution_accelerator", "source_input", "target_name", "versions", "graph_spec"),
}
"""Names of repeated fields anywhere in model_config.proto (a config.pbtxt may give them once, without [])."""

MAPS = {
    *("parameters", "cc_model_filenames", "metric_tags", "input_map", "output_map", "inputs"),
    *("priority_queue_policy", "optimization.cuda.graph_spec.input", "optimization.cuda.graph_spec.lower_bound.input"),
}
"""Map fields of model_config.proto, written in text format as repeated ``{key: ... value: ...}`` entries."""


class TritonMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _single_as_list(cls, data: Any) -> Any:
        """A repeated message given once (``instance_group.count=2`` on the command line) is a list of one."""
        if not isinstance(data, dict):
            return data
        return {k: [v] if k in REPEATED and isinstance(v, dict) else v for k, v in data.items()}


class QueuePolicy(TritonMessage):
    timeout_action: Literal["REJECT", "DELAY"] | None = None
    default_timeout_microseconds: NonNegativeInt | None = None
    allow_timeout_override: bool | None = None
    max_queue_size: NonNegativeInt | None = None


class DynamicBatching(TritonMessage):
    preferred_batch_size: list[PositiveInt] | None = None
    max_queue_delay_microseconds: NonNegativeInt | None = None
    preserve_ordering: bool | None = None
    priority_levels: NonNegativeInt | None = None
    default_priority_level: NonNegativeInt | None = None
    default_queue_policy: QueuePolicy | None = None
    priority_queue_policy: dict[str, QueuePolicy] | None = None


class Reshape(TritonMessage):
    shape: list[int] = Field(default_factory=list)


class ModelInput(TritonMessage):
    name: str
    data_type: DataType
    format: Literal["FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"] | None = None
    dims: list[int] = Field(default_factory=list)
    reshape: Reshape | None = None
    is_shape_tensor: bool | None = None
    allow_ragged_batch: bool | None = None
    optional: bool | None = None
    is_non_linear_format_io: bool | None = None


class ModelOutput(TritonMessage):
    name: str
    data_type: DataType
    dims: list[int] = Field(default_factory=list)
    reshape: Reshape | None = None
    label_filename: str | None = None
    is_shape_tensor: bool | None = None
    is_non_linear_format_io: bool | None = None


class InstanceGroup(TritonMessage):
    name: str | None = None
    kind: Literal["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"] | None = None
    count: NonNegativeInt | None = None
    rate_limiter: Message | None = None
    gpus: list[int] | None = None
    secondary_devices: list[Message] | None = None
    profile: list[str] | None = None
    passive: bool | None = None
    host_policy: str | None = None


class Parameter(TritonMessage):
    string_value: str


class TritonModelConfig(TritonMessage):
    """The top-level fields of Triton's ModelConfig; ferry checks names and simple types, Triton the rest."""

    name: str | None = None
    platform: str | None = None
    backend: str | None = None
    runtime: str | None = None
    version_policy: Message | None = None
    max_batch_size: NonNegativeInt | None = None
    input: list[ModelInput] | None = None
    output: list[ModelOutput] | None = None
    batch_input: list[Message] | None = None
    batch_output: list[Message] | None = None
    optimization: Message | None = None
    dynamic_batching: DynamicBatching | None = None
    sequence_batching: Message | None = None
    ensemble_scheduling: Message | None = None
    instance_group: list[InstanceGroup] | None = None
    default_model_filename: str | None = None
    cc_model_filenames: dict[str, str] | None = None
    metric_tags: dict[str, str] | None = None
    parameters: dict[str, Parameter] | None = None
    model_warmup: list[Message] | None = None
    model_operations: Message | None = None
    model_transaction_policy: Message | None = None
    model_repository_agents: Message | None = None
    response_cache: Message | None = None
    model_metrics: Message | None = None

    @field_validator("parameters", mode="before")
    @classmethod
    def _plain_parameters(cls, value: Any) -> Any:
        """``parameters.K=V`` on the command line means ``parameters { key: K value { string_value: V } }``."""
        if not isinstance(value, dict):
            return value
        return {k: v if isinstance(v, dict) else {"string_value": str(v)} for k, v in value.items()}

    @model_validator(mode="after")
    def _one_scheduler(self) -> TritonModelConfig:
        chosen = [
            f for f in ("dynamic_batching", "sequence_batching", "ensemble_scheduling") if getattr(self, f) is not None
        ]
        if len(chosen) > 1:
            raise ValueError(f"Triton takes one scheduling choice, not {' and '.join(chosen)}: keep one")
        return self


TRITON_FIELDS = tuple(TritonModelConfig.model_fields)
"""Every top-level field of Triton's ModelConfig."""


def to_ferry_keys(engine: str, config: dict[str, Any]) -> dict[str, Any]:
    """Triton ModelConfig fields -> ferry keys for a non-triton engine; refuses fields ferry cannot honour."""
    aux: dict[str, Any] = {}
    for key, value in config.items():
        mapper = _MAPPERS.get(key)
        if mapper is None:
            raise InvalidInput(
                f"--aux-config: config.pbtxt field {key!r} cannot apply to the {engine} engine: {_why(key)}"
            )
        aux.update(mapper(engine, value))
    return aux


def _why(key: str) -> str:
    if key in ("input", "output"):
        return f"give the tensors with --{key}-name, --{key}-type and --{key}-size"
    return (
        "ferry maps only max_batch_size, dynamic_batching, instance_group.count and parameters; "
        "remove it, or serve the model with --engine triton"
    )


def _max_batch(engine: str, value: Any) -> dict[str, Any]:
    return {"max_batch_size": 1 if value == 0 else value}  # Triton's 0 ("the model does not batch") is ferry's 1


def _instance_groups(engine: str, groups: list[dict[str, Any]]) -> dict[str, Any]:
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise InvalidInput("--aux-config: config.pbtxt instance_group: write instance_group [ { count: N } ]")
    for group in groups:
        other = [k for k in group if k not in ("count", "name", "kind")]
        if other or group.get("kind", "KIND_AUTO") not in ("KIND_AUTO", "KIND_CPU"):
            field = other[0] if other else f"kind: {group['kind']}"
            raise InvalidInput(
                f"--aux-config: config.pbtxt instance_group {field} cannot apply to the {engine} engine: ferry maps "
                "only instance_group.count (to instances); choose a device with device= (torchscript) or providers= "
                "(onnxruntime)"
            )
    counts = [g.get("count", 1) for g in groups]
    return {"instances": sum(counts) if all(isinstance(c, int) for c in counts) else counts}


def _parameters(engine: str, params: dict[str, Any]) -> dict[str, Any]:
    return {k: _json_or_text(v.get("string_value", "") if isinstance(v, dict) else v) for k, v in params.items()}


PLATFORMS = {
    "onnxruntime_onnx": ("onnxruntime",),
    "onnxruntime": ("onnxruntime",),
    "pytorch_libtorch": ("torchscript",),
    "pytorch": ("torchscript",),
    "python": ("custom", "custom_async"),
    "fil": ("sklearn", "xgboost", "lightgbm"),
}
"""Triton platform/backend names -> the ferry engines that serve the same models."""


def _platform(engine: str, value: Any) -> dict[str, Any]:
    if engine not in PLATFORMS.get(str(value), ()):
        raise InvalidInput(
            f"--aux-config: config.pbtxt platform/backend {value!r} is not what the {engine} engine runs: "
            "remove the line, or serve the model with --engine triton"
        )
    return {}


_MAPPERS: dict[str, Callable[[str, Any], dict[str, Any]]] = {
    "name": lambda engine, value: {},  # the endpoint's name comes from --endpoint
    "platform": _platform,
    "backend": _platform,
    "max_batch_size": _max_batch,
    "dynamic_batching": lambda engine, value: {"dynamic_batching": value},
    "instance_group": _instance_groups,
    "parameters": _parameters,
}


def _json_or_text(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        return text


def triton_model_name(name: str, version: str = "") -> str:
    """The model an endpoint version is on a Triton server: ``<endpoint>_<version>``, or ``<endpoint>``.

    `ferry triton sync` writes ``<repository>/<this>/1/...``; the triton engine asks the server for it.
    """
    return f"{name}_{version}" if version else name
