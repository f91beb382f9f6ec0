"""RouteTable: an immutable map from endpoint names to loaded runtimes, swapped in one assignment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from ferry.control.spec import CanarySpec, ShadowSpec
from ferry.errors import NotFound, NotReady
from ferry.serving.request.canary import CanaryChoice, canary_choices, version_order
from ferry.serving.request.pipeline import EndpointRuntime

__all__ = ["RouteTable", "version_order"]


@dataclass(frozen=True)
class RouteTable:
    """What one instance serves for one revision. Never mutated: a new revision builds a new table."""

    revision: int = 0
    runtimes: Mapping[str, EndpointRuntime] = field(default_factory=dict)
    failed: Mapping[str, str] = field(default_factory=dict)
    """Endpoint key -> load error, for versions of this revision that could not be loaded."""
    loading: frozenset[str] = frozenset()
    """Endpoint keys of a newer revision still being loaded."""
    canaries: Mapping[str, CanarySpec] = field(default_factory=dict)
    """Canary name -> spec; resolved against ``runtimes`` once, here (a canary wins over an endpoint's name)."""
    shadows: Mapping[str, ShadowSpec] = field(default_factory=dict)
    """Shadowed endpoint -> shadow spec; ``serving/request/shadow.py`` samples and sends the copies."""

    if TYPE_CHECKING:  # derived in __post_init__, not fields: declared for the checker only
        _newest: dict[str, str] = field(init=False)
        _canaries: dict[str, CanaryChoice] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runtimes", MappingProxyType(dict(self.runtimes)))
        object.__setattr__(self, "_newest", _newest_versions(self.runtimes))
        object.__setattr__(self, "_canaries", canary_choices(self.canaries, self.runtimes, self._newest))

    def resolve(self, endpoint: str, version: str | None = None, routing_key: str | None = None) -> EndpointRuntime:
        """The runtime for ``endpoint[/version]``; without a version, a canary of that name picks a target
        (by weight, or fixed by ``routing_key``), else the unversioned endpoint, else the newest version."""
        if not version and (canary := self._canaries.get(endpoint)) is not None:
            return self.runtimes[canary.pick(routing_key)]
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
        served = ", ".join(sorted({*self.runtimes, *self.canaries})) or "none"
        raise NotFound(f"no endpoint {key!r} on this service; served endpoints: {served}")

    def knows(self, endpoint: str) -> bool:
        """Whether ``endpoint`` names something of this table (served, canary, loading or failed)."""
        keys = (*self.runtimes, *self.canaries, *self.loading, *self.failed)
        return any(_name(key) == endpoint for key in keys)


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
