"""RouteTable: an immutable map from endpoint names to loaded runtimes, swapped in one assignment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ferry.errors import NotFound, NotReady
from ferry.serving.pipeline import EndpointRuntime


def version_order(version: str) -> tuple[int, int | str]:
    """Sort key: numeric versions by value (2 < 10), others after them by text."""
    return (0, int(version)) if re.fullmatch(r"\d+", version) else (1, version)


@dataclass(frozen=True)
class RouteTable:
    """What one instance serves for one revision. Never mutated: a new revision builds a new table."""

    revision: int = 0
    runtimes: Mapping[str, EndpointRuntime] = field(default_factory=dict)
    failed: Mapping[str, str] = field(default_factory=dict)
    """Endpoint key -> load error, for versions of this revision that could not be loaded."""
    loading: frozenset[str] = frozenset()
    """Endpoint keys of a newer revision still being loaded."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "runtimes", MappingProxyType(dict(self.runtimes)))
        object.__setattr__(self, "_newest", _newest_versions(self.runtimes))

    def resolve(self, endpoint: str, version: str | None = None) -> EndpointRuntime:
        """The runtime for ``endpoint[/version]``; without a version, the unversioned one or the newest."""
        key = f"{endpoint}/{version}" if version else self._newest.get(endpoint, endpoint)
        runtime = self.runtimes.get(key)
        if runtime is not None:
            return runtime
        unready = [key] if version else [key, *(k for k in (*self.loading, *self.failed) if _name(k) == endpoint)]
        for candidate in unready:
            if candidate in self.loading:
                raise NotReady(f"endpoint {candidate} is loading; retry shortly", retry_after=1.0)
        for candidate in unready:
            if candidate in self.failed:
                raise NotReady(
                    f"endpoint {candidate} failed to load: {self.failed[candidate]} "
                    "(`ferry status` shows it; fix and add it again)",
                    retry_after=5.0,
                )
        served = ", ".join(sorted(self.runtimes)) or "none"
        raise NotFound(f"no endpoint {key!r} on this service; served endpoints: {served}")


def _newest_versions(runtimes: Mapping[str, EndpointRuntime]) -> dict[str, str]:
    newest: dict[str, str] = {}
    for key, runtime in runtimes.items():
        name, version = runtime.spec.name, runtime.spec.version
        current = newest.get(name)
        if not version:
            newest[name] = key  # an unversioned endpoint is what /serve/name asks for
        elif current is None or (runtimes[current].spec.version and _later(version, runtimes[current].spec.version)):
            newest[name] = key
    return newest


def _name(key: str) -> str:
    return key.split("/", 1)[0]


def _later(a: str, b: str) -> bool:
    return version_order(a) > version_order(b)
