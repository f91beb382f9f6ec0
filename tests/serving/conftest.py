"""A service in a temporary store with a DataPlane and Reconciler beside it (no HTTP, no event loop)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ferry.control.service import ServiceControl
from ferry.control.store import Store
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry
from ferry.serving.request.dataplane import DataPlane
from ferry.serving.revisions.reconciler import Reconciler


class Service:
    """A real store, registry and artifacts on disk, and one instance's data plane applied by hand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = Store.open(f"sqlite:///{root / 'ferry.db'}")
        self.artifacts = ArtifactStore(str(root / "artifacts"), root / "cache", progress=False)
        self.registry = ModelRegistry(self.store.sql, self.artifacts)
        self.control = ServiceControl(self.store, self.registry, self.artifacts)
        self.id = self.store.create_service("test").id
        self.plane = DataPlane()
        self.reconciler = Reconciler(self.plane, self.store, self.registry, self.artifacts, self.id)
        self._n = 0

    def code(self, source: str, **extra_files: str) -> Path:
        """Write a preprocess.py (plus extra modules) into a fresh folder; returns the folder."""
        self._n += 1
        folder = self.root / f"code{self._n}"
        folder.mkdir()
        (folder / "preprocess.py").write_text(textwrap.dedent(source))
        for name, text in extra_files.items():
            (folder / f"{name}.py").write_text(textwrap.dedent(text))
        return folder

    def model(self, flip: bool = False) -> str:
        """A LogisticRegression on 2 features (class 1 when x0 + x1 > 0, or the opposite with flip)."""
        rng = np.random.default_rng(0)
        x = rng.normal(size=(100, 2))
        y = (x.sum(axis=1) > 0).astype(int)
        path = self.root / f"model-{flip}.pkl"
        joblib.dump(LogisticRegression().fit(x, 1 - y if flip else y), path)
        return self.registry.upload("logreg", path=path, project="tests").id

    def add(self, endpoint: str, engine: str = "custom", version: str = "", code: Path | None = None, **kw):
        return self.control.add_endpoint(
            self.id, engine=engine, endpoint=endpoint, version=version, preprocess=code, **kw
        )

    def apply(self) -> None:
        self.reconciler.swap.apply(self.store.head(self.id))

    def close(self) -> None:
        self.plane.close()
        self.store.sql.dispose()


@pytest.fixture
def service(tmp_path: Path, ferry_home: Path):
    svc = Service(tmp_path)
    yield svc
    svc.close()
