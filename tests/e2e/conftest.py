"""Fixtures for end-to-end tests: one throwaway FERRY_HOME, one service and one real `ferry serve` per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Ferry
from tests.server import Server

STORE_VARIABLES = ("FERRY_STORE", "FERRY_ARTIFACT_ROOT", "FERRY_SERVICE", "FERRY_CACHE_DIR")


@pytest.fixture(scope="module")
def e2e_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """What `ferry_home` does, for a whole module: the server outlives a single test."""
    home = tmp_path_factory.mktemp("e2e") / "ferry-home"
    with pytest.MonkeyPatch.context() as mp:
        for name in STORE_VARIABLES:
            mp.delenv(name, raising=False)
        mp.setenv("FERRY_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def e2e_ferry(e2e_home: Path) -> Ferry:
    """The real `ferry` command against the module's store."""
    return Ferry(e2e_home.parent)


@pytest.fixture(scope="module")
def e2e_service(e2e_ferry: Ferry) -> str:
    """A service named as in every ClearML-Serving example; its id."""
    return e2e_ferry.service("serving example")


@pytest.fixture(scope="module")
def example_server(e2e_home: Path, e2e_service: str) -> Iterator[Server]:
    """`ferry --id <service> serve` on a free port, for the whole module."""
    server = Server(e2e_home.parent, "--id", e2e_service)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(ferry_sqlite: Ferry, tmp_path: Path) -> Iterator[Server]:
    """A new service and one `ferry serve` for it, for one test."""
    ferry_sqlite.service()
    srv = Server(tmp_path)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
