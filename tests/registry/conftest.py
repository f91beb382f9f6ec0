"""Fixtures for the registry tests: a local artifact store (the S3 server is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.registry.artifacts import ArtifactStore


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "remote"), tmp_path / "cache", progress=False)
