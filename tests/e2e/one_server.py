"""Fixtures for a module whose tests share one store, one service and one `ferry serve`.

Bind them in such a module (``ferry_sqlite, server = one_server.ferry_sqlite, one_server.server``): they replace
the per-test store and server its tests would otherwise get, so the module starts one server, not one a test.
"""

from __future__ import annotations

import pytest

from tests.conftest import Ferry
from tests.server import Server


@pytest.fixture
def ferry_sqlite(e2e_ferry: Ferry) -> Ferry:
    """The module's store (SQLite under its own FERRY_HOME) and its one service: every test here uses it."""
    return e2e_ferry


@pytest.fixture
def server(example_server: Server) -> Server:
    """One `ferry serve` for the module: its tests add endpoints under distinct names, none restarts it."""
    return example_server
