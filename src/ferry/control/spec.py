"""Validated documents of the control plane: endpoints, canaries, rules, metrics and a whole service config."""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ferry.control.engine_names import ENGINE_NAMES
from ferry.registry.artifacts import ArtifactRef

MODEL_FREE_ENGINES = ("custom", "custom_async")
"""Engines whose endpoints may have no model at all (the user's ``process`` does the work)."""

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
NAME_MAX = 128
"""Longest endpoint name or version: each is a URL path part and a label of every endpoint metric."""
TENSOR_NAME_MAX = 256
"""Longest input or output name (models' own names such as ``onnx::Gemm_0`` or ``x:0`` are far shorter)."""
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
STORED = {"stored": True}
"""Validation context for documents read back from the store: limits added later warn there, not refuse."""
_warned: set[str] = set()
VARIABLE_PATTERN = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
"""A custom statistic's name: it becomes part of a Prometheus metric name (ferry_custom_<name>)."""
BYTES_DTYPES = {"bytes", "str", "string", "object", "bytes_", "object_"}
DTYPES = {"bool", "float16", "float32", "float64"} | {f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64)}
DTYPE_ALIASES = {
    "bool_": "bool",
    "half": "float16",
    "single": "float32",
    "double": "float64",
    "float": "float64",
    "int": "int64",
    "long": "int64",
    "fp16": "float16",
    "fp32": "float32",
    "fp64": "float64",
    "f2": "float16",
    "f4": "float32",
    "f8": "float64",
    "i1": "int8",
    "i2": "int16",
    "i4": "int32",
    "i8": "int64",
    "u1": "uint8",
    "u2": "uint16",
    "u4": "uint32",
    "u8": "uint64",
}


RESERVED_NAMES = {"openai": "the OpenAI API (chat, completions, models, embeddings) of the LLM endpoints"}
"""Endpoint names taken by ferry's own routes under /serve/."""


def check_name(value: str, what: str = "endpoint name", stored: bool = False) -> str:
    """Return ``value`` stripped of surrounding slashes, or raise ValueError naming the rule."""
    name = value.strip().strip("/")
    if not NAME_PATTERN.match(name):
        parts = name.split("/")
        if what == "endpoint name" and len(parts) == 2 and all(NAME_PATTERN.match(p) for p in parts):
            raise ValueError(
                f"invalid endpoint name {value!r}: no '/' in a name; for a version give "
                f"--endpoint {parts[0]} --version {parts[1]}"
            )
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '_', '.' or '-' (no '/', no spaces)")
    if what == "endpoint name" and name in RESERVED_NAMES and not stored:
        raise ValueError(f"the endpoint name {name!r} is reserved: /serve/{name}/ is {RESERVED_NAMES[name]}")
    if len(name) > NAME_MAX:
        _over_limit(f"{what} {name[:40]!r}... is {len(name)} characters long: at most {NAME_MAX}", stored)
    return name


def check_tensor_name(value: str, stored: bool = False) -> str:
    """An input or output name: any printable text (``input.1``, ``onnx::Gemm_0``, ``x:0``) up to a length."""
    if CONTROL_CHARACTERS.search(value):
        _over_limit(f"tensor name {value[:40]!r} holds a control character: use printable text", stored)
    if len(value) > TENSOR_NAME_MAX:
        _over_limit(f"tensor name {value[:40]!r}... is {len(value)} characters long: at most {TENSOR_NAME_MAX}", stored)
    return value


def _over_limit(message: str, stored: bool) -> None:
    """Refuse a new name past a limit; one already stored (made before the limit) loads, with one warning."""
    if not stored:
        raise ValueError(message)
    if message not in _warned:
        _warned.add(message)
        log.warning("a stored config breaks a limit `model add` now enforces: %s; it loads as written", message)


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("stored"))


def canonical_dtype(name: str) -> str:
    """Map a dtype name (numpy's, a short alias like fp32, Triton's TYPE_FP32, or bytes) to numpy's name."""
    raw = str(name).strip().lower().removeprefix("type_").removeprefix("np.").removeprefix("numpy.")
    if raw in BYTES_DTYPES:
        return "bytes"
    if raw in DTYPES:
        return raw
    if raw in DTYPE_ALIASES:
        return DTYPE_ALIASES[raw]
    raise ValueError(f"unknown dtype {name!r}: use a numpy dtype name such as float32, int64, uint8, bool or bytes")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(Frozen):
    """One model input or output: name, dtype and shape (``-1`` marks a dynamic axis)."""

    name: str | None = None
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_tensor_name(value, _stored(info))

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        return None if value is None else canonical_dtype(value)

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and any(d == 0 or d < -1 for d in value):
            raise ValueError(f"bad shape {list(value)}: each axis is a positive size or -1 (dynamic)")
        return value


class EndpointSpec(Frozen):
    """What one ``name/version`` serves: engine, model, preprocess code, tensors and engine settings."""

    name: str
    version: str = ""
    engine: str
    model_id: str | None = None
    preprocess: ArtifactRef | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    aux_config: dict[str, Any] = Field(default_factory=dict)
    """Engine settings; typed per engine in ``control/aux_models.py``, checked by ``control/aux_config.py`` when
    written (stored revisions load as they were written)."""
    aux_config_text: str | None = None
    auto_update: str | None = None
    """Name of the auto-update rule that created this endpoint, if any."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str, info: ValidationInfo) -> str:
        return check_name(value, stored=_stored(info))

    @field_validator("version")
    @classmethod
    def _version(cls, value: str, info: ValidationInfo) -> str:
        value = str(value).strip().strip("/")
        return check_name(value, "version", _stored(info)) if value else value

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value not in ENGINE_NAMES:
            raise ValueError(f"unknown engine {value!r}: choose one of {', '.join(ENGINE_NAMES)}")
        return value

    @model_validator(mode="after")
    def _model_needed(self) -> EndpointSpec:
        if self.model_id is None and self.engine not in MODEL_FREE_ENGINES and self.auto_update is None:
            raise ValueError(
                f"engine {self.engine!r} needs a model: give --model-id, or --name/--project "
                f"(only {' and '.join(MODEL_FREE_ENGINES)} endpoints may have none)"
            )
        return self

    @property
    def key(self) -> str:
        """The URL path under /serve/: ``name`` or ``name/version``."""
        return endpoint_key(self.name, self.version)


def endpoint_key(name: str, version: str = "") -> str:
    return f"{name}/{version}" if version else name


class ModelQuery(Frozen):
    """Which registry models match: exact name and project, all of the tags, published only or not."""

    name: str | None = None
    project: str | None = None
    tags: tuple[str, ...] = ()
    published: bool = False


class CanarySpec(Frozen):
    """Requests to ``endpoint`` split by ``weights`` over fixed endpoints or the newest under a prefix."""

    endpoint: str
    weights: tuple[float, ...]
    input_endpoints: tuple[str, ...] = ()
    input_endpoint_prefix: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str, info: ValidationInfo) -> str:
        return check_name(value, "canary endpoint", _stored(info))

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(w < 0 for w in value) or sum(value) <= 0:
            raise ValueError("canary weights must be non-negative numbers with a positive sum")
        return value

    @model_validator(mode="after")
    def _targets(self) -> CanarySpec:
        if bool(self.input_endpoints) == bool(self.input_endpoint_prefix):
            raise ValueError("a canary takes either --input-endpoints or --input-endpoint-prefix")
        if self.input_endpoints and len(self.input_endpoints) != len(self.weights):
            raise ValueError(
                f"{len(self.weights)} weights for {len(self.input_endpoints)} input endpoints: give one each"
            )
        return self


class ShadowSpec(Frozen):
    """A copy of ``fraction`` of ``endpoint``'s requests goes to ``target`` after the live answer; counted apart."""

    endpoint: str
    """The shadowed endpoint: ``name`` (all its versions) or ``name/version``."""
    target: str
    """The endpoint the copies go to: ``name`` (its newest version) or ``name/version``."""
    fraction: float = Field(default=1.0, gt=0, le=1)

    @field_validator("endpoint", "target")
    @classmethod
    def _key(cls, value: str, info: ValidationInfo) -> str:
        parts = value.strip().strip("/").split("/")
        if len(parts) > 2:
            raise ValueError(f"{value!r} is not NAME or NAME/VERSION")
        return "/".join(check_name(part, stored=_stored(info)) for part in parts)

    @model_validator(mode="after")
    def _apart(self) -> ShadowSpec:
        if self.endpoint == self.target:
            raise ValueError(f"endpoint {self.endpoint!r} cannot shadow itself: give another --target")
        return self


class AutoUpdateSpec(Frozen):
    """Keep the newest ``max_versions`` models matching ``query`` deployed as ``endpoint/1..N``."""

    endpoint: str
    query: ModelQuery
    template: EndpointSpec
    max_versions: int = Field(default=1, ge=1)
    last_version: int = Field(default=0, ge=0)
    """The highest version this rule has deployed: new models get the next one, so no number is reused."""


class MetricVariable(Frozen):
    """One request variable an endpoint logs."""

    kind: Literal["scalar", "enum", "value", "counter"]
    buckets: tuple[float, ...] = ()
    values: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _complete(self) -> MetricVariable:
        if self.kind == "scalar" and not self.buckets:
            raise ValueError("a scalar variable needs buckets (a,b,c or MIN/MAX/STEP)")
        if any(not math.isfinite(b) for b in self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"buckets {list(self.buckets)} must be finite and increasing")
        if self.kind == "enum" and not self.values:
            raise ValueError("an enum variable needs its values (a,b,c)")
        return self


class MetricSpec(Frozen):
    """Which variables an endpoint logs and the fraction of requests sampled."""

    endpoint: str
    log_freq: float | None = Field(default=None, ge=0, le=1)
    variables: dict[str, MetricVariable] = Field(default_factory=dict)

    @field_validator("variables")
    @classmethod
    def _names(cls, value: dict[str, MetricVariable]) -> dict[str, MetricVariable]:
        for name in value:
            if not VARIABLE_PATTERN.match(name):
                raise ValueError(
                    f"invalid variable name {name!r}: use letters, digits and '_', not starting with a digit"
                )
        return value


class ServiceSettings(Frozen):
    """Service-wide settings changed by ``ferry config``."""

    base_serving_url: str | None = None
    triton_grpc_server: str | None = None
    metric_log_freq: float = Field(default=1.0, ge=0, le=1)


class ServiceConfig(Frozen):
    """The whole desired state of one service: stored as one document per revision."""

    endpoints: dict[str, EndpointSpec] = Field(default_factory=dict)
    canaries: dict[str, CanarySpec] = Field(default_factory=dict)
    auto_update: dict[str, AutoUpdateSpec] = Field(default_factory=dict)
    shadows: dict[str, ShadowSpec] = Field(default_factory=dict)
    """Shadowed endpoint -> its shadow (revisions written before shadows existed load with none)."""
    metrics: dict[str, MetricSpec] = Field(default_factory=dict)
    settings: ServiceSettings = Field(default_factory=ServiceSettings)
