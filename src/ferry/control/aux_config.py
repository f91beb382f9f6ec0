"""One typed aux-config model per engine: every endpoint setting that ferry reads, checked at ``model add``."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ferry.control.pbtxt import parse_pbtxt
from ferry.control.triton_config import MAPS, REPEATED, TRITON_FIELDS, TritonModelConfig, to_ferry_keys
from ferry.control.triton_config import DynamicBatching as TritonDynamicBatching
from ferry.errors import InvalidInput


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, (int, str)) and not isinstance(value, bool) else value


def _comma_list(value: Any) -> Any:
    return [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


MAX_BATCH = 4096
"""Largest batch: far past where batching stops paying on a CPU, and what a GPU batch reasonably holds."""
MAX_DELAY_MS = 10_000.0
"""Longest batch delay: batching waits milliseconds, not seconds."""
MAX_TIMEOUT_MS = 3_600_000.0
"""Longest request timeout: an hour."""
MAX_INSTANCES = 256
MAX_THREADS = 1024
MAX_QUEUE = 1_000_000
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH)]
BatchSizes = Annotated[list[BatchSize], BeforeValidator(_listed)]
"""One batch size or a list of them."""
Providers = Annotated[list[str], BeforeValidator(_comma_list)]
"""A list of names or one comma-separated string."""
OptimizationLevel = Annotated[Literal["disable", "basic", "extended", "all"], BeforeValidator(_lower)]


class AuxBase(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)


class QueuePolicy(AuxBase):
    """Triton's spelling of ferry's queue keys, under ``dynamic_batching.default_queue_policy``."""

    max_queue_size: Annotated[int, Field(ge=1, le=MAX_QUEUE)] | None = None
    """Same as ``max_queue_size``."""
    default_timeout_microseconds: Annotated[int, Field(ge=1, le=int(MAX_TIMEOUT_MS * 1000))] | None = None
    """Same as ``request_timeout_ms``, in microseconds."""


class QueueBatching(AuxBase):
    default_queue_policy: QueuePolicy | None = None


class DynamicBatching(QueueBatching):
    """Triton's spelling of ferry's batcher keys, under ``dynamic_batching``."""

    preferred_batch_size: BatchSizes | None = None
    """Same as ``preferred_batch_size``."""
    max_queue_delay_microseconds: Annotated[float, Field(ge=0, le=MAX_DELAY_MS * 1000)] | None = None
    """Same as ``max_queue_delay_ms``, in microseconds."""


class RayAux(AuxBase):
    """How ``ferry serve --ray`` runs this version's model deployment on Ray Serve (ferry/ray/)."""

    min_replicas: Annotated[int, Field(ge=0, le=MAX_INSTANCES)] = 1
    """Fewest replicas Ray Serve keeps running."""
    max_replicas: Annotated[int, Field(ge=1, le=MAX_INSTANCES)] = 1
    """Most replicas Ray Serve's autoscaler may start."""
    target_ongoing_requests: Annotated[float, Field(gt=0, le=MAX_QUEUE)] = 2.0
    """Requests in flight per replica the autoscaler aims for: more per replica adds replicas."""
    max_ongoing_requests: Annotated[int, Field(ge=1, le=MAX_QUEUE)] = 32
    """Requests one replica takes at once (its batches are made from these)."""
    num_cpus: Annotated[float, Field(ge=0, le=MAX_THREADS)] = 1.0
    """CPUs Ray reserves for each replica."""
    num_gpus: Annotated[float, Field(ge=0, le=64)] = 0.0
    """GPUs Ray reserves for each replica."""
    upscale_delay_s: Annotated[float, Field(ge=0, le=86_400)] | None = None
    """Seconds the load must call for more replicas before they start; unset: FERRY_RAY_UPSCALE_DELAY_S (10)."""
    downscale_delay_s: Annotated[float, Field(ge=0, le=86_400)] | None = None
    """Seconds the load must allow fewer replicas before they stop; unset: FERRY_RAY_DOWNSCALE_DELAY_S (120)."""
    colocate: bool = False
    """Run the model in the ingress replicas (no model deployment: one Ray call a request less; it scales
    with the ingress, and the keys above do not apply)."""
    bridge: bool = True
    """When the version is added or changed on a running service, serve it from the ingress replicas' own
    copy while its model deployment starts, then move it there (no bridge for versions that ask for GPUs)."""

    @model_validator(mode="after")
    def _bounds(self) -> RayAux:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}")
        return self


class CommonAux(AuxBase):
    """Keys of every engine: read by the runtime (serving/request/pipeline.py) and the reconciler."""

    ray: RayAux | None = None
    """This version's model deployment under ``ferry serve --ray`` (ray.min_replicas=1 ray.max_replicas=8 ...)."""

    warmup: Any = None
    """A request body sent once after the version loads, before it takes traffic."""
    inline_budget_ms: Annotated[float, Field(ge=0, le=1000)] = 1.0  # serving.inline.INLINE_BUDGET_S
    """Sync pre/post work measured under this many ms runs on the event loop; 0 never inlines."""
    max_queue_size: Annotated[int, Field(ge=1, le=MAX_QUEUE)] = 1024
    """Requests waiting for this endpoint beyond which it answers 503."""
    request_timeout_ms: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_MS)] | None = None
    """A request running longer is answered 504; unset: the service default (FERRY_REQUEST_TIMEOUT_S)."""


SPELLINGS = {
    "max_queue_size": "dynamic_batching.default_queue_policy.max_queue_size",
    "request_timeout_ms": "dynamic_batching.default_queue_policy.default_timeout_microseconds",
    "max_queue_delay_ms": "dynamic_batching.max_queue_delay_microseconds",
    "preferred_batch_size": "dynamic_batching.preferred_batch_size",
    "instances": "batch_instances",
}
"""ferry's key -> the other spelling of the same setting (Triton's, or an old name)."""


class QueueAux(CommonAux):
    """The custom and custom_async engines: the common keys only."""

    dynamic_batching: QueueBatching | None = None

    @model_validator(mode="after")
    def _one_spelling(self) -> QueueAux:
        both = [f"{a} and {b}" for a, b in SPELLINGS.items() if _given(self, a) and _given(self, b)]
        if both:
            raise ValueError(f"{'; '.join(both)} set the same thing: give one of them")
        return self


class BatchAux(QueueAux):
    """Engines the DynamicBatcher can wrap: the common keys plus the batcher's (serving/batching/batcher.py)."""

    max_batch_size: BatchSize = 1
    """Most requests run as one model call; 1 turns batching off."""
    max_queue_delay_ms: Annotated[float, Field(ge=0, le=MAX_DELAY_MS)] = 0.0
    """How long the first request of a batch waits for more."""
    preferred_batch_size: BatchSizes | None = None
    """Batch sizes (an int or a list) run as soon as they are reached."""
    pad_value: float = 0.0
    """Fills the ragged (-1) axes when requests of different lengths share a batch."""
    instances: Annotated[int, Field(ge=1, le=MAX_INSTANCES)] | None = None
    """Batches that may run at once (model instances as threads); default one per core of the worker (and a
    spare in a single-worker server) for engines whose model call releases the GIL (onnxruntime,
    torchscript), else 1 (serving/batching/instances.py)."""
    batch_instances: Annotated[int, Field(ge=1, le=MAX_INSTANCES)] | None = None
    """Same as ``instances``."""
    group_by_length: bool = False
    """Run a batch of ragged requests (-1 axes) as a few model calls of similar lengths where that saves
    padding (serving/batching/padding.py); off by default: MiniLM on 80 mixed sentences gained ~10 %
    (bench/ragged.sh)."""
    dynamic_batching: DynamicBatching | None = None

    @model_validator(mode="after")
    def _delay_fits(self) -> BatchAux:
        delay_ms, timeout_ms = _delay_ms(self), _timeout_ms(self)
        if delay_ms is not None and timeout_ms is not None and delay_ms >= timeout_ms:
            raise ValueError(
                f"max_queue_delay_ms={delay_ms:g} is not below the request timeout of {timeout_ms:g} ms, so "
                "requests waiting for a batch would time out: lower the delay or raise request_timeout_ms"
            )
        return self

    @model_validator(mode="after")
    def _preferred_fit(self) -> BatchAux:
        nested = self.dynamic_batching.preferred_batch_size if self.dynamic_batching else None
        too_big = [s for s in self.preferred_batch_size or nested or [] if s > self.max_batch_size]
        if too_big:
            raise ValueError(
                f"preferred batch sizes {too_big} exceed max_batch_size={self.max_batch_size}: "
                "raise max_batch_size or drop them"
            )
        return self


def _delay_ms(aux: BatchAux) -> float | None:
    nested = aux.dynamic_batching.max_queue_delay_microseconds if aux.dynamic_batching else None
    return aux.max_queue_delay_ms if _given(aux, "max_queue_delay_ms") else _scaled(nested, 1e-3)


def _timeout_ms(aux: QueueAux) -> float | None:
    policy = aux.dynamic_batching.default_queue_policy if aux.dynamic_batching else None
    nested = policy.default_timeout_microseconds if policy else None
    return aux.request_timeout_ms if aux.request_timeout_ms is not None else _scaled(nested, 1e-3)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


class ClassicAux(BatchAux):
    """The classic engines (sklearn, xgboost, lightgbm): batching keys plus compiling to ONNX."""

    compile: Literal["onnx"] | None = None
    """``onnx``: convert the model to an ONNX graph served by ONNX Runtime (engines/compiled.py)."""
    compile_tolerance: Annotated[float, Field(ge=0)] = 1e-4
    """Largest difference from the original's answers on sample rows at which the compiled model is served."""


class SklearnAux(ClassicAux):
    method: str = "predict"
    """The model method called: predict, predict_proba, transform, ..."""


class OnnxRuntimeAux(BatchAux):
    graph_optimization_level: OptimizationLevel = "all"
    """ONNX Runtime's graph optimisations."""
    intra_op_num_threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 1
    """Threads inside one operator."""
    inter_op_num_threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 1
    """Threads across operators."""
    providers: Providers | None = None
    """Execution providers in order (a list or "A,B"); unset: CUDA when present, then CPU."""


class TorchScriptAux(BatchAux):
    device: str | None = None
    """The torch device (cpu, cuda, cuda:1); unset: cuda when present, else cpu."""
    intra_op_num_threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 1
    """torch.set_num_threads for this model."""


class TritonAux(TritonModelConfig, CommonAux):
    """The triton engine: Triton's ModelConfig fields pass through, plus ferry's common keys."""

    triton_grpc_server: str | None = None
    """HOST:PORT of this endpoint's Triton server; unset: the service's (``ferry config --triton-grpc-server``)."""


AUX_MODELS: dict[str, type[AuxBase]] = {
    "sklearn": SklearnAux,
    "xgboost": ClassicAux,
    "lightgbm": ClassicAux,
    "onnxruntime": OnnxRuntimeAux,
    "torchscript": TorchScriptAux,
    "triton": TritonAux,
    "custom": QueueAux,
    "custom_async": QueueAux,
}
"""Engine name -> the typed model of its aux config."""

BATCHABLE = tuple(engine for engine, model in AUX_MODELS.items() if issubclass(model, BatchAux))
"""Engines whose endpoints the DynamicBatcher may wrap."""


def validate_aux_config(engine: str, aux: dict[str, Any], aux_text: str | None = None) -> dict[str, Any]:
    """Check ``aux`` (and a config file's text: JSON or Triton's config.pbtxt) against ``engine``'s keys.

    Returns the keys the user wrote with typed values; raises InvalidInput naming the bad key and the valid
    ones. Only new revisions go through here: stored ones load as they were written.
    """
    model = AUX_MODELS.get(engine)
    if model is None:  # EndpointSpec names the engines that exist
        return dict(aux)
    given = {**from_text(engine, aux_text), **aux} if aux_text else dict(aux)
    try:
        checked = model.model_validate(given)
    except ValidationError as exc:
        raise InvalidInput("--aux-config: " + "; ".join(_explain(engine, model, e) for e in exc.errors())) from None
    return checked.model_dump(mode="json", exclude_unset=True)


def from_text(engine: str, text: str) -> dict[str, Any]:
    """A config file's text as aux keys: a JSON object as it is, a config.pbtxt mapped for ``engine``."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--aux-config file: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise InvalidInput('--aux-config file: write one JSON object of keys, e.g. {"max_batch_size": 8}')
        return value
    config = parse_pbtxt(text, REPEATED, MAPS)
    return config if engine == "triton" else to_ferry_keys(engine, config)


def _explain(engine: str, model: type[BaseModel], error: Any) -> str:
    loc = error["loc"]
    key = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        return _unknown(engine, model, loc, key)
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] in BOUND_ERRORS:
        what = "not a finite number" if error["type"] == "finite_number" else "out of range"
        message = f"{what}; valid: {_valid_range(model, loc)}"
    return f"{key}={error['input']!r} for the {engine} engine: {message}" if loc else message


LOW, HIGH = (Ge, Gt), (Le, Lt)
BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}


def _valid_range(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """A key's bounds as a reader writes them, e.g. "1 <= value <= 4096" (list items: the item's bounds)."""
    names = [p for p in loc if isinstance(p, str)]
    field = _model_at(model, tuple(names[:-1])).model_fields.get(names[-1]) if names else None
    bounds = [m for m in _metadata(field) if isinstance(m, (Ge, Gt, Le, Lt))]
    low = next((f"{_n(b.ge)} <= " if isinstance(b, Ge) else f"{_n(b.gt)} < " for b in bounds if isinstance(b, LOW)), "")
    high = next(
        (f" <= {_n(b.le)}" if isinstance(b, Le) else f" < {_n(b.lt)}" for b in bounds if isinstance(b, HIGH)), ""
    )
    return f"{low}value{high}" if bounds else "a finite number"


def _n(bound: Any) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _metadata(field: Any) -> list[Any]:
    """Constraint objects of a field, also those inside ``Annotated[...] | None`` and list items."""
    if field is None:
        return []
    found = list(field.metadata)
    stack = [field.annotation]
    while stack:
        annotation = stack.pop()
        found += list(getattr(annotation, "__metadata__", ()))
        for inner in getattr(annotation, "__metadata__", ()):
            found += list(getattr(inner, "metadata", ()))
        stack += list(getattr(annotation, "__args__", ()))
    return found


def _unknown(engine: str, model: type[BaseModel], loc: tuple[int | str, ...], key: str) -> str:
    parent_path = [str(p) for p in loc[:-1] if not isinstance(p, int)]
    prefix = "".join(f"{p}." for p in parent_path)
    valid = [prefix + k for k in aux_keys_of(_model_at(model, loc[:-1]))]
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if engine not in BATCHABLE and loc[0] in BatchAux.model_fields:
        hint = f" (the {engine} engine does not batch; batching keys apply to {', '.join(BATCHABLE)})"
    elif engine != "triton" and _is_triton_setting(loc):
        hint = f" ({key!r} is a Triton setting: serve the model with --engine triton to use it)"
    return f"unknown key {key!r} for the {engine} engine{hint}; valid keys: {', '.join(valid)}"


def _is_triton_setting(loc: tuple[int | str, ...]) -> bool:
    if len(loc) == 1:
        return loc[0] in TRITON_FIELDS
    return loc[0] == "dynamic_batching" and len(loc) == 2 and loc[1] in TritonDynamicBatching.model_fields


def aux_keys(engine: str) -> list[str]:
    """Every aux-config key ``engine`` takes, dotted where nested (Triton's own messages are not expanded)."""
    return aux_keys_of(AUX_MODELS[engine])


def aux_keys_of(model: type[BaseModel]) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        sub = _submodel(field.annotation)
        if sub is not None and issubclass(sub, AuxBase):
            keys += [f"{name}.{k}" for k in aux_keys_of(sub)]
        else:
            keys.append(name)
    return sorted(keys)


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        sub = _submodel(field.annotation) if field else None
        model = sub or model  # list indexes and dict keys stay on the same model
    return model


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _given(model: BaseModel, dotted: str) -> bool:
    node: Any = model
    for part in dotted.split("."):
        if not isinstance(node, BaseModel) or part not in node.model_fields_set:
            return False
        node = getattr(node, part)
    return True


@dataclass(frozen=True)
class QueueLimits:
    """What the data plane needs of an endpoint's queue: its bound and its request timeout (None: the default)."""

    max_queue_size: int = 1024
    request_timeout_s: float | None = None


def queue_limits(engine: str, aux: dict[str, Any]) -> QueueLimits:
    """The endpoint's queue bound and timeout from either spelling; never raises on an older revision's keys."""
    policy = aux.get("dynamic_batching", {}) if engine != "triton" else {}
    policy = policy.get("default_queue_policy", {}) if isinstance(policy, dict) else {}
    policy = policy if isinstance(policy, dict) else {}
    size = _number(aux.get("max_queue_size", policy.get("max_queue_size")), 1024)
    timeout_ms = _number(aux.get("request_timeout_ms"), None)
    if timeout_ms is None and _number(policy.get("default_timeout_microseconds"), None):
        timeout_ms = float(policy["default_timeout_microseconds"]) / 1000
    return QueueLimits(
        max_queue_size=max(1, int(size)), request_timeout_s=timeout_ms / 1000 if timeout_ms and timeout_ms > 0 else None
    )


def _number(value: Any, default: Any) -> Any:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default
