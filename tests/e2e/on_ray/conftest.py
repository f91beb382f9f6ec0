"""A real Ray cluster of two nodes on this machine, shared by the package's modules. Run alone: `pytest -m ray`."""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.server import Server

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster

QUICK_METRICS = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}
"""Replicas and handles report their load to Serve's controller every 0.5 s (10 s by default)."""


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    """A head and a second node, 4 logical CPUs each; this process is connected to read Serve's state."""
    ray = pytest.importorskip("ray", reason="the Ray tests need pip install 'ferry[ray]'")
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        for name, value in QUICK_METRICS.items():
            mp.setenv(name, value)  # the nodes' processes inherit it
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False})
        nodes.add_node(num_cpus=4)
        ray.init(address=nodes.address, logging_level="WARNING", log_to_driver=False)
        try:
            yield nodes
        finally:
            ray.shutdown()
            nodes.shutdown()


@contextlib.contextmanager
def load(server: Server, path: str, clients: int = 8, key: str = "pid") -> Iterator[collections.Counter]:
    """``clients`` threads POST {"x": 1} to ``path`` until the block ends; counts (status, the answer's ``key``)."""
    stop, answers = threading.Event(), collections.Counter()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not stop.is_set():
                response = http.post(path, json={"x": 1})
                value = response.json().get(key) if response.status_code == 200 else None
                answers[(response.status_code, value)] += 1

    with ThreadPoolExecutor(clients) as pool:
        running = [pool.submit(client) for _ in range(clients)]
        try:
            yield answers
        finally:
            stop.set()
            for done in running:
                done.result()


def flowing(server: Server, answers: collections.Counter, more: int = 20, what: str = "requests flowing") -> None:
    """Wait until ``more`` further requests have been answered."""
    start = sum(answers.values())
    server.wait_for(lambda: sum(answers.values()) >= start + more, 30, what)


def replicas_of(app_part: str) -> list[str]:
    """Names of the live replica actors of the applications whose name holds ``app_part``."""
    import ray

    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in named if a["name"].startswith("SERVE_REPLICA::") and app_part in a["name"])
