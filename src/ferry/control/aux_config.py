"""Checking a user's aux config against its engine's model (``aux_models``), with messages that name the bad key,
the valid range or the valid keys; and the queue limits the data plane reads from a stored config."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError

from ferry.control.aux_models import AUX_MODELS, BATCHABLE, AuxBase, BatchAux
from ferry.control.pbtxt import parse_pbtxt
from ferry.control.triton_config import MAPS, REPEATED, TRITON_FIELDS, to_ferry_keys
from ferry.control.triton_config import DynamicBatching as TritonDynamicBatching
from ferry.errors import InvalidInput


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
