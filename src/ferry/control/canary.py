"""Canary specs as users write them: targets and prefix normalised, a one-line summary, early warnings."""

from __future__ import annotations

from collections.abc import Iterable

from ferry.control.spec import CanarySpec, ServiceConfig, check_name


def target_key(target: str) -> str:
    """``/name/version/`` -> ``name/version`` (a bare ``name`` stays: it routes as /serve/name does)."""
    parts = target.strip().strip("/").split("/")
    if len(parts) > 2:
        raise ValueError(f"invalid canary target {target!r}: use NAME or NAME/VERSION")
    return "/".join(check_name(part, "canary target") for part in parts)


def prefix_name(prefix: str | None) -> str | None:
    """``name/`` or ``name`` -> ``name``: the endpoint whose versions the canary splits over."""
    if prefix is None:
        return None
    return check_name(prefix.strip().rstrip("/"), "canary prefix (an endpoint name, e.g. sentiment/)")


def summary(spec: CanarySpec) -> str:
    """``weights 0.1 0.9 over a/2, a/1`` or ``... over the newest versions of a/``: for the history line."""
    weights = " ".join(f"{w:g}" for w in spec.weights)
    if spec.input_endpoint_prefix is not None:
        return f"weights {weights} over the newest versions of {spec.input_endpoint_prefix}/"
    return f"weights {weights} over {', '.join(spec.input_endpoints)}"


def warnings(spec: CanarySpec, config: ServiceConfig) -> list[str]:
    """What the user should know now: targets that do not exist yet (requests skip them until they do)."""
    if spec.input_endpoint_prefix is not None:
        name = spec.input_endpoint_prefix
        if _versions(name, config.endpoints) or name in config.auto_update:
            return []
        return [f"canary {spec.endpoint}: endpoint {name} has no versions yet; it answers 503 until one is added"]
    absent = [t for t in spec.input_endpoints if not _exists(t, config.endpoints)]
    if not absent:
        return []
    return [f"canary {spec.endpoint}: {', '.join(absent)} not served yet; the other targets share their weight"]


def _exists(target: str, keys: Iterable[str]) -> bool:
    return any(key == target or key.split("/", 1)[0] == target for key in keys)


def _versions(name: str, keys: Iterable[str]) -> list[str]:
    return [key for key in keys if key.startswith(f"{name}/")]
