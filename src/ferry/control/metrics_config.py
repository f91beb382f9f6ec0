"""Custom-statistics config: ClearML's `--variable-*` grammar parsed into a MetricSpec, merged, removed, matched."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ferry.control.spec import VARIABLE_PATTERN, MetricSpec, MetricVariable, ServiceConfig, check_name
from ferry.errors import InvalidInput, NotFound

MAX_BUCKETS = 1000
"""More histogram buckets than this is a typo in a range, not a histogram anyone can read."""
WILDCARD = "*"


def variable_name(text: str) -> str:
    """A variable name that is safe as a Prometheus label value and metric-name part, or InvalidInput."""
    name = text.strip()
    if not VARIABLE_PATTERN.match(name):
        raise InvalidInput(f"invalid variable name {text!r}: use letters, digits and '_', not starting with a digit")
    return name


def metric_endpoint(text: str) -> str:
    """The endpoint a metric config names: ``name``, ``name/version`` or ``name/*`` (every version)."""
    parts = text.strip().strip("/").split("/")
    if len(parts) > 2:
        raise InvalidInput(f"invalid metric endpoint {text!r}: give NAME, NAME/VERSION or NAME/*")
    try:
        name = check_name(parts[0])
        version = parts[1] if len(parts) == 2 else ""
        if version and version != WILDCARD:
            version = check_name(version, "version")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return f"{name}/{version}" if version else name


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{what}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidInput(f"{what}: {text.strip()!r} is not a finite number (+Inf is always the last bucket)")
    return value


def bucket_range(low: float, high: float, step: float, what: str = "buckets") -> tuple[float, ...]:
    """``low, low+step, ...`` up to ``high`` (included when it lands on the grid, within float tolerance)."""
    if step <= 0:
        raise InvalidInput(f"{what}: the step must be over 0 (MIN/MAX/STEP)")
    if low >= high:
        raise InvalidInput(f"{what}: MIN must be below MAX (MIN/MAX/STEP)")
    count = math.floor((high - low) / step + 1e-9) + 1
    if count > MAX_BUCKETS:
        raise InvalidInput(f"{what}: {count} buckets, at most {MAX_BUCKETS}: use a larger step")
    # 15 significant digits drop the float noise of low + i * step (0.30000000000000004 -> 0.3)
    return tuple(sorted({float(f"{low + i * step:.15g}") for i in range(count)}))


def parse_buckets(text: str, what: str = "buckets") -> tuple[float, ...]:
    """Histogram buckets from ``a,b,c`` (sorted, duplicates dropped) or ``min/max/step`` (expanded)."""
    if "/" in text:
        parts = text.split("/")
        if len(parts) != 3:
            raise InvalidInput(f"{what}: {text!r} is not MIN/MAX/STEP")
        low, high, step = (_number(p, what) for p in parts)
        return bucket_range(low, high, step, what)
    items = [p for p in text.split(",") if p.strip()]
    if not items:
        raise InvalidInput(f"{what}: no buckets: give a,b,c or MIN/MAX/STEP")
    buckets = tuple(sorted({_number(p, what) for p in items}))
    if len(buckets) > MAX_BUCKETS:
        raise InvalidInput(f"{what}: {len(buckets)} buckets, at most {MAX_BUCKETS}")
    return buckets


def _split(arg: str, flag: str) -> tuple[str, str]:
    name, sep, rest = arg.partition("=")
    if not sep:
        raise InvalidInput(f"{flag} {arg!r}: write NAME=VALUES, e.g. {flag} 'x0=0,0.5,1'")
    return variable_name(name), rest


def parse_scalar(arg: str) -> tuple[str, MetricVariable]:
    """``name=a,b,c`` or ``name=min/max/step``: a histogram with those buckets."""
    name, rest = _split(arg, "--variable-scalar")
    return name, MetricVariable(kind="scalar", buckets=parse_buckets(rest, f"--variable-scalar {name}"))


def parse_enum(arg: str) -> tuple[str, MetricVariable]:
    """``name=a,b,c``: one counter per listed value (others counted as ``other`` when collected)."""
    name, rest = _split(arg, "--variable-enum")
    values = tuple(dict.fromkeys(v.strip() for v in rest.split(",") if v.strip()))
    if not values:
        raise InvalidInput(f"--variable-enum {name}: no values: write {name}=a,b,c")
    return name, MetricVariable(kind="enum", values=values)


def parse_variables(
    scalars: Iterable[str] = (),
    enums: Iterable[str] = (),
    values: Iterable[str] = (),
    counters: Iterable[str] = (),
) -> dict[str, MetricVariable]:
    """Every ``--variable-*`` argument of one command; a name given twice is refused."""
    parsed = [parse_scalar(a) for a in scalars] + [parse_enum(a) for a in enums]
    parsed += [(variable_name(a), MetricVariable(kind="value")) for a in values]
    parsed += [(variable_name(a), MetricVariable(kind="counter")) for a in counters]
    variables: dict[str, MetricVariable] = {}
    for name, variable in parsed:
        if name in variables:
            raise InvalidInput(f"variable {name!r} is given twice: give each variable once")
        variables[name] = variable
    return variables


def merge(old: MetricSpec | None, new: MetricSpec) -> tuple[MetricSpec, list[str]]:
    """``new``'s variables added to ``old``'s (same name replaced, with a warning); its log_freq if given."""
    if old is None:
        return new, []
    warnings = [
        f"variable {n!r} of {new.endpoint} already existed: replaced it" for n in new.variables if n in old.variables
    ]
    log_freq = old.log_freq if new.log_freq is None else new.log_freq
    merged = old.model_copy(update={"log_freq": log_freq, "variables": {**old.variables, **new.variables}})
    return merged, warnings


def without(config: ServiceConfig, endpoint: str, variable: str | None) -> tuple[dict[str, MetricSpec], str]:
    """The metric configs with ``endpoint``'s (or only its ``variable``) removed, and the history line."""
    key = metric_endpoint(endpoint)
    spec = config.metrics.get(key)
    if spec is None:
        known = ", ".join(sorted(config.metrics)) or "(none)"
        raise NotFound(f"no metrics configured for endpoint {key!r}; there are: {known}")
    rest = {k: v for k, v in config.metrics.items() if k != key}
    if variable is None:
        return rest, f"metrics of {key} removed"
    if variable not in spec.variables:
        known = ", ".join(sorted(spec.variables)) or "(none)"
        raise NotFound(f"endpoint {key!r} logs no variable {variable!r}; it logs: {known}")
    kept = {k: v for k, v in spec.variables.items() if k != variable}
    return {**rest, key: spec.model_copy(update={"variables": kept})}, f"metric variable {variable} of {key} removed"


def summary(spec: MetricSpec) -> str:
    """One history line: ``metrics E set: log_freq 0.5, x0 (scalar), label (enum)``."""
    freq = "service default" if spec.log_freq is None else f"{spec.log_freq:g}"
    names = ", ".join(f"{n} ({v.kind})" for n, v in spec.variables.items())
    return f"metrics {spec.endpoint} set: log_freq {freq}" + (f"; {names}" if names else "")


def endpoint_exists(config: ServiceConfig, key: str) -> bool:
    """Whether ``key`` (``name``, ``name/version`` or ``name/*``) names something that serves requests now."""
    name, _, version = key.partition("/")
    if version == WILDCARD:
        return any(e.name == name for e in config.endpoints.values()) or name in config.auto_update
    return key in config.endpoints or key in config.canaries


def matching_metric_spec(config: ServiceConfig, endpoint_key: str) -> MetricSpec | None:
    """The metric config for a served ``endpoint_key``: its own first, then ``name/*`` (any version, or none)."""
    exact = config.metrics.get(endpoint_key)
    if exact is not None:
        return exact
    return config.metrics.get(f"{endpoint_key.partition('/')[0]}/{WILDCARD}")


def log_freq(config: ServiceConfig, spec: MetricSpec) -> float:
    """The sampling rate of ``spec``: its own, or the service default from ``config --metric-log-freq``."""
    return config.settings.metric_log_freq if spec.log_freq is None else spec.log_freq


def check_shared_names(metrics: dict[str, MetricSpec]) -> None:
    """A variable name is one Prometheus metric (ferry_custom_<name>): every endpoint logs it the same way."""
    first: dict[str, tuple[str, MetricVariable]] = {}
    for key, spec in metrics.items():
        for name, variable in spec.variables.items():
            where, known = first.setdefault(name, (key, variable))
            if (known.kind, known.buckets) != (variable.kind, variable.buckets):
                raise InvalidInput(
                    f"variable {name!r} is {_shape(known)} on {where} but {_shape(variable)} on {key}: both would be "
                    f"the Prometheus metric ferry_custom_{name}; give it the same kind and buckets, or another name"
                )


def _shape(variable: MetricVariable) -> str:
    buckets = ",".join(f"{b:g}" for b in variable.buckets)
    return f"a {variable.kind}" + (f" with buckets {buckets}" if buckets else "")
