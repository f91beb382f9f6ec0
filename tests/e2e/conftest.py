"""Fixtures for end-to-end tests: one throwaway FERRY_HOME, one service and one real `ferry serve` per module."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Ferry, TrainedExample, _pg_bin, once_per_run
from tests.postgres import Postgres
from tests.server import Server

STORE_VARIABLES = ("FERRY_STORE", "FERRY_ARTIFACT_ROOT", "FERRY_SERVICE", "FERRY_CACHE_DIR")
FAST_POLL = {"FERRY_POLL_INTERVAL": "0.05"}
"""The fixtures' servers look for a new revision every 50 ms: each change a test waits for lands sooner."""


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
    server = Server(e2e_home.parent, "--id", e2e_service, env=FAST_POLL)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(ferry_sqlite: Ferry, tmp_path: Path) -> Iterator[Server]:
    """A new service and one `ferry serve` for it, for one test."""
    ferry_sqlite.service()
    srv = Server(tmp_path, env=FAST_POLL)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@dataclass(frozen=True)
class Converted:
    """`ferry model convert` of the Hugging Face example as its README runs it: the ONNX file and what it printed."""

    example: TrainedExample
    onnx: Path
    out: str


@pytest.fixture(scope="session")
def sentiment_onnx(hf_example: TrainedExample, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The example's model converted once a run (~8 s), shared by the xdist workers, for the tests that serve it
    in ferry and on Triton."""

    def convert(root: Path) -> None:
        out = Ferry(root)("model", "convert", "--hf", str(hf_example.hf), "--task", "text-classification",
                          "--output", str(root / "model.onnx"), "--endpoint", "sentiment", "--name",
                          "minilm sentiment", "--project", "serving examples", "--preprocess",
                          str(hf_example.preprocess), env={"HF_HUB_OFFLINE": "1"}).out  # fmt: skip
        (root / "convert.out").write_text(out)

    root = once_per_run(tmp_path_factory, "sentiment-onnx", convert)
    return Converted(hf_example, root / "model.onnx", (root / "convert.out").read_text())


@pytest.fixture(scope="session")
def sklearn_example_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/sklearn/train.py's model, trained once a run (~1.3 s) for the tests that serve it but do not
    test it.

    test_examples.py runs each example's train.py itself: that is what it tests.
    """
    from tests.e2e.test_examples import train  # the helper, not its tests

    root = once_per_run(tmp_path_factory, "sklearn-example", lambda root: train("sklearn", root / "sklearn-model.pkl"))
    return root / "sklearn-model.pkl"


@pytest.fixture
def postgres(ferry_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Postgres]:
    """A PostgreSQL server of the test's own as FERRY_STORE, which the test may stop and start."""
    bindir = _pg_bin()
    server = Postgres(bindir)
    try:
        server.start()
        monkeypatch.setenv("FERRY_STORE", server.url)
        yield server
    finally:
        server.remove()
