"""Canary choice: which target takes a request, by weight over fixed endpoints or the newest under a prefix."""

from __future__ import annotations

import bisect
import random
import re
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from itertools import accumulate

from ferry.control.spec import CanarySpec
from ferry.errors import NotReady

STICKY_SCALE = 1.0 / 2**32
"""Maps a crc32 (0 .. 2**32 - 1) into [0, 1)."""


def version_order(version: str) -> tuple[int, int | str]:
    """Sort key: numeric versions by value (2 < 10), others after them by text."""
    return (0, int(version)) if re.fullmatch(r"\d+", version) else (1, version)


def sticky_point(routing_key: str) -> float:
    """A point in [0, 1) that one routing key always maps to (crc32: stable across processes and runs)."""
    return zlib.crc32(routing_key.encode()) * STICKY_SCALE


@dataclass(frozen=True)
class CanaryChoice:
    """One canary as one RouteTable serves it: live targets and their cumulative normalised weights."""

    name: str
    targets: tuple[str, ...]
    bounds: tuple[float, ...]
    """Cumulative weights over ``targets``, normalised: strictly increasing, the last exactly 1.0."""
    unavailable: str = ""
    """Why no target can take a request (the 503 message), when ``targets`` is empty."""

    def pick(self, routing_key: str | None = None) -> str:
        """The endpoint key for one request: random by weight, or fixed by ``routing_key``."""
        if not self.targets:
            raise NotReady(self.unavailable, retry_after=5.0)
        point = random.random() if routing_key is None else sticky_point(routing_key)
        return self.targets[bisect.bisect_right(self.bounds, point)]

    def shares(self) -> dict[str, float]:
        """Each target's share of the traffic (for tests and status)."""
        shares: dict[str, float] = {}
        for target, lo, hi in zip(self.targets, (0.0, *self.bounds[:-1]), self.bounds, strict=True):
            shares[target] = shares.get(target, 0.0) + hi - lo
        return shares


def newest_under(prefix: str, served: Collection[str]) -> list[str]:
    """Served keys ``name/<version>`` of endpoint ``prefix`` (trailing ``/`` optional), newest first."""
    name = prefix.strip().strip("/")
    versions = [key.split("/", 1)[1] for key in served if key.startswith(f"{name}/")]
    return [f"{name}/{v}" for v in sorted(versions, key=version_order, reverse=True)]


def canary_choice(spec: CanarySpec, served: Collection[str], newest: Mapping[str, str]) -> CanaryChoice:
    """Resolve ``spec`` against the served endpoint keys (``newest``: name -> key that /serve/name reaches)."""
    if spec.input_endpoint_prefix is not None:
        return _by_prefix(spec, served)
    return _fixed(spec, served, newest)


def canary_choices(
    canaries: Mapping[str, CanarySpec], served: Collection[str], newest: Mapping[str, str]
) -> dict[str, CanaryChoice]:
    """Every canary of a revision resolved once, when its RouteTable is built."""
    return {name: canary_choice(spec, served, newest) for name, spec in canaries.items()}


def _by_prefix(spec: CanarySpec, served: Collection[str]) -> CanaryChoice:
    prefix = (spec.input_endpoint_prefix or "").strip().strip("/")
    targets = newest_under(prefix, served)[: len(spec.weights)]
    if not targets:
        why = f"canary {spec.endpoint}: no version of endpoint {prefix!r} is served (prefix {prefix}/)"
        return _unavailable(spec.endpoint, f"{why}; add one with `ferry model add --endpoint {prefix} --version N`")
    weights = spec.weights[: len(targets)]
    why = f"canary {spec.endpoint}: the served versions of {prefix!r} ({', '.join(targets)}) all have weight 0"
    return _weighted(spec.endpoint, targets, weights, f"{why}; change the weights with `ferry model canary`")


def _fixed(spec: CanarySpec, served: Collection[str], newest: Mapping[str, str]) -> CanaryChoice:
    resolved = [(target, _served_key(target, served, newest)) for target in spec.input_endpoints]
    missing = [target for target, key in resolved if key is None]
    live = [key for _, key in resolved if key is not None]
    weights = [w for (_, key), w in zip(resolved, spec.weights, strict=True) if key is not None]
    why = (
        f"canary {spec.endpoint}: none of its targets with a weight is served: {', '.join(missing)}; "
        "add them with `ferry model add`, or change the canary with `ferry model canary`"
    )
    return _weighted(spec.endpoint, live, weights, why)


def _served_key(target: str, served: Collection[str], newest: Mapping[str, str]) -> str | None:
    """``name/version`` as it is; a bare ``name`` as /serve/name would route it (unversioned, else newest)."""
    key = target.strip().strip("/")
    if "/" in key:
        return key if key in served else None
    return newest.get(key)


def _weighted(name: str, targets: list[str], weights: Collection[float], unavailable: str) -> CanaryChoice:
    """Targets with a positive weight and their normalised cumulative weights; ``unavailable`` if none."""
    pairs = [(t, w) for t, w in zip(targets, weights, strict=True) if w > 0]
    if not pairs:
        return _unavailable(name, unavailable)
    total = sum(w for _, w in pairs)
    bounds = [c / total for c in accumulate(w for _, w in pairs)]
    bounds[-1] = 1.0  # float sums may fall short of 1; every point of [0, 1) must land on a target
    return CanaryChoice(name, tuple(t for t, _ in pairs), tuple(bounds))


def _unavailable(name: str, why: str) -> CanaryChoice:
    return CanaryChoice(name, (), (), unavailable=why)
