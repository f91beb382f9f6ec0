"""Auto-update rules over a real `ferry serve`: deploy on publish, max versions, withdraw, periodic catch-up."""

from __future__ import annotations

import time
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.dummy import DummyClassifier

from ferry.control.store import Store
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry
from ferry.settings import Settings
from tests.conftest import Ferry
from tests.server import Server

pytestmark = pytest.mark.e2e

SKLEARN = Path(__file__).parents[2] / "examples" / "sklearn" / "preprocess.py"
NAME, PROJECT = "train sklearn model", "serving examples"
BODY = {"x0": 1, "x1": 2}


def upload(ferry: Ferry, tmp_path: Path, answer: int, *flags: str) -> str:
    """Upload a model whose every prediction is ``answer``; its id."""
    path = tmp_path / f"model{answer}.pkl"
    joblib.dump(DummyClassifier(strategy="constant", constant=answer).fit(np.zeros((3, 2)), [1, 2, 3]), path)
    out = ferry("model", "upload", "--name", NAME, "--project", PROJECT, "--path", str(path), *flags).out
    return out.strip().rsplit("=", 1)[1]


def gone(server: Server, endpoint: str) -> bool:
    return server.serve(endpoint, BODY).status_code == 404


def test_published_models_follow_the_rule(ferry_sqlite: Ferry, tmp_path: Path):
    """ClearML's readme line, then publish -> served within 2 s (default 1 s poll), max versions, withdraw."""
    ferry_sqlite.service()
    upload(ferry_sqlite, tmp_path, 1, "--publish", "--tags", "prod")
    server = Server(tmp_path, env={"FERRY_POLL_INTERVAL": "1.0"})
    try:
        server.wait_ready()
        ferry_sqlite("model", "auto-update", "--engine", "sklearn", "--endpoint", "test_model_sklearn_auto",
                     "--preprocess", str(SKLEARN), "--name", NAME, "--project", PROJECT, "--tags", "prod",
                     "--published", "--max-versions", "2")  # fmt: skip
        assert server.wait_endpoint("test_model_sklearn_auto/1", BODY) == {"y": [1]}

        second = upload(ferry_sqlite, tmp_path, 2, "--tags", "prod")  # not published yet: not served
        ferry_sqlite("model", "publish", "--model-id", second)
        published = time.monotonic()
        assert server.wait_endpoint("test_model_sklearn_auto/2", BODY) == {"y": [2]}
        assert time.monotonic() - published < 2.0

        third = upload(ferry_sqlite, tmp_path, 3, "--tags", "prod", "--publish")
        assert server.wait_endpoint("test_model_sklearn_auto/3", BODY) == {"y": [3]}
        server.wait_for(lambda: gone(server, "test_model_sklearn_auto/1"), what="version 1 withdrawn (max 2)")

        ferry_sqlite("model", "untag", "--model-id", third, "--tags", "prod")
        server.wait_for(lambda: gone(server, "test_model_sklearn_auto/3"), what="untagged version 3 withdrawn")
        assert server.serve("test_model_sklearn_auto", BODY).json() == {"y": [2]}

        ferry_sqlite("model", "delete", "--model-id", second)  # no --force: the rule withdraws what it deployed
        server.wait_for(lambda: gone(server, "test_model_sklearn_auto/2"), what="deleted version 2 withdrawn")
        rules = ferry_sqlite("model", "endpoints", "--json").json()["auto_update"]
        assert rules["test_model_sklearn_auto"]["max_versions"] == 2
    finally:
        server.stop()


def test_a_registry_change_nobody_reconciled_is_caught_up_by_the_server(server: Server, tmp_path: Path):
    """A writer that crashed after changing the registry: the instance's periodic reconcile deploys the model."""
    ferry = Ferry(tmp_path)
    ferry("model", "auto-update", "--engine", "sklearn", "--endpoint", "x_auto", "--preprocess", str(SKLEARN),
          "--name", NAME, "--project", PROJECT)  # fmt: skip
    settings = Settings()
    registry = ModelRegistry(
        Store.open(settings.store_url()).sql,
        ArtifactStore(settings.artifact_url(), settings.cache_path(), progress=False),
    )
    path = tmp_path / "crashed.pkl"
    joblib.dump(DummyClassifier(strategy="constant", constant=3).fit(np.zeros((3, 2)), [1, 2, 3]), path)
    registry.upload(NAME, path, project=PROJECT)  # the registry only: no reconcile ran
    assert server.wait_endpoint("x_auto/1", BODY, timeout=15) == {"y": [3]}  # within 10 polls (RULES_EVERY) and a load
    history = ferry("history", "--json").json()
    assert "auto-update: +x_auto/1" in history[-1]["summary"]
