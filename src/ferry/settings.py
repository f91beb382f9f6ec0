"""Process knobs (``FERRY_`` environment prefix). What an instance serves lives in the store, never here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Read once at process start; every field can be set as ``FERRY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FERRY_", extra="ignore")

    home: Path = Field(default=Path("~/.ferry"), description="Folder for the default store, artifacts, cache.")
    """Folder holding the default SQLite store, artifact root and download cache."""

    store: str = Field(default="", description="SQLAlchemy URL of the store; default sqlite under home.")
    """SQLAlchemy URL of the store, e.g. ``postgresql+psycopg://user@host/db``; empty means SQLite in home."""

    artifact_root: str = Field(default="", description="fsspec URL where artifacts are written.")
    """Default fsspec URL artifacts are uploaded to; empty means ``<home>/artifacts``."""

    cache_dir: Path | None = Field(default=None, description="Local cache of downloaded artifacts.")
    """Where downloaded artifacts are cached by sha256; default ``<home>/cache``."""

    service: str = Field(default="", description="Default service id when --id is not given.")
    """Service id used when the command line gives no ``--id``."""

    host: str = "127.0.0.1"
    """Address ``ferry serve`` binds."""

    port: int = 8080
    """Port ``ferry serve`` binds."""

    grpc_port: int | None = None
    """Port ``ferry serve`` answers KServe V2 gRPC on (``--grpc-port``); unset: no gRPC."""

    workers: int | Literal["auto"] = "auto"
    """Serving processes sharing the port; ``auto``: one per usable core (at most 8, as many as half the free memory
    holds), one for a service with an LLM endpoint (``ferry/cli/workers.py``)."""

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> int | str:
        workers = parse_workers(str(value))
        if workers is None:
            raise ValueError(f"FERRY_WORKERS={value!r}: give a count of processes (1, 2, ...) or auto")
        return workers

    poll_interval: float = 1.0
    """Seconds between an instance's checks of the store for a new revision."""

    heartbeat_interval: float = 2.0
    """Seconds between an instance's heartbeats; one silent for five intervals counts as gone."""

    startup_timeout: float = 120.0
    """Seconds a new serving process waits for its first revision to load before it takes traffic."""

    max_body_mb: float = 64.0
    """Largest request body (after gzip inflation) ``ferry serve`` accepts, in MiB; larger gets 413."""

    request_timeout_s: float = 60.0
    """Seconds a request may take before it is answered 504; an endpoint's aux ``request_timeout_ms`` overrides it."""

    drain_timeout_s: float = 30.0
    """Seconds a replaced endpoint version's requests may take to finish; later ones are answered 503."""

    serve_tokens: str = Field(default="", repr=False)
    """Comma-separated bearer tokens ``ferry serve`` accepts; set, every route but the health probes needs one."""

    serve_tokens_file: str = ""
    """A file of bearer tokens (one a line, ``#`` comments); ``ferry serve --token-file`` sets it for its workers."""

    admin_tokens: str = Field(default="", repr=False)
    """Comma-separated admin tokens: set, the web console's writes need one; unset, they come from loopback only."""

    admin_tokens_file: str = ""
    """A file of admin tokens (as ``serve_tokens_file``); ``ferry serve --admin-token-file`` sets it."""

    metrics: bool = True
    """Whether ``ferry serve`` records Prometheus metrics and answers GET /metrics (``--no-metrics``: off)."""

    ray_upscale_delay_s: float = 10.0
    """``ferry serve --ray``: seconds the load must call for more replicas of a deployment before they start."""

    ray_downscale_delay_s: float = 120.0
    """``ferry serve --ray``: seconds the load must allow fewer replicas of a deployment before they stop."""

    ray_look_back_s: float = 10.0
    """``ferry serve --ray``: the window over which Ray Serve averages the load its autoscaling reads."""

    def home_dir(self) -> Path:
        return self.home.expanduser()

    def store_url(self) -> str:
        return self.store or f"sqlite:///{self.home_dir() / 'ferry.db'}"

    def artifact_url(self) -> str:
        return self.artifact_root or str(self.home_dir() / "artifacts")

    def cache_path(self) -> Path:
        return (self.cache_dir or self.home_dir() / "cache").expanduser()


def parse_workers(text: str) -> int | Literal["auto"] | None:
    """A worker count as ``--workers`` and FERRY_WORKERS take it: a positive count or ``auto``; None otherwise."""
    text = text.strip().lower()
    if text == "auto":
        return "auto"
    return int(text) if text.isdigit() and int(text) > 0 else None


WORKERS_ENV = "FERRY_WORKERS"
"""``ferry serve`` sets it for its workers: the cores and the memory are shared among that many processes."""


def usable_cores() -> int:
    """The CPUs this process may use: its affinity mask (taskset, cpusets), cut to a cgroup v2 CPU quota
    (``docker --cpus``, a Kubernetes limit) rounded up."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota else cores


def memory_available(path: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> int | None:
    """Bytes of memory new allocations can take now without swapping: Linux MemAvailable, cut to what a cgroup v2
    memory limit leaves (a container's, which /proc/meminfo does not show); None where unknown."""
    known = [m for m in (_meminfo_available(path), _cgroup_memory_room(cgroup)) if m is not None]
    return min(known) if known else None


def _meminfo_available(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_memory_room(folder: str) -> int | None:
    """``memory.max`` less ``memory.current`` of this process's cgroup (v2); None when unlimited or unreadable."""
    try:
        with open(f"{folder}/memory.max") as limit, open(f"{folder}/memory.current") as used:
            top = limit.read().strip()
            return None if top == "max" else max(0, int(top) - int(used.read().strip()))
    except (OSError, ValueError):
        return None


def _cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """The cgroup's CPU limit in whole cores (``200000 100000`` -> 2, ``150000 100000`` -> 2); None when unlimited."""
    try:
        with open(path) as limit:
            quota, period = limit.read().split()[:2]
        return -(-int(quota) // int(period)) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def serving_workers() -> int:
    """How many serving processes of this server share the machine (FERRY_WORKERS; 1 when unset or not a count)."""
    given = os.environ.get(WORKERS_ENV, "1")
    return int(given) if given.isdigit() and int(given) > 0 else 1


def cores_per_worker() -> int:
    """This serving process's share of the usable cores, at least one."""
    return max(1, usable_cores() // serving_workers())
