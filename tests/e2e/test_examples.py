"""Every example under examples/ run as its README says: train, upload, add, serve, POST over HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Ferry
from tests.server import Server

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROJECT = "serving examples"
SETOSA = [5.1, 3.5, 1.4, 0.2]  # iris sample 0, class 0
VIRGINICA = [6.7, 3.0, 5.2, 2.3]  # iris sample 145, class 2


def train(example: str, *outputs: Path) -> None:
    """Run the example's train.py with the test's Python, writing its model(s) to ``outputs``."""
    script = EXAMPLES / example / "train.py"
    proc = subprocess.run(
        [sys.executable, str(script), *map(str, outputs)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr}{proc.stdout}"
    for output in outputs:
        assert output.is_file(), f"{script} did not write {output}"


def upload(ferry: Ferry, name: str, path: Path) -> str:
    out = ferry("model", "upload", "--name", name, "--project", PROJECT, "--path", str(path)).out
    assert "Model created and registered, new Model ID=" in out, out
    return out.strip().rsplit("=", 1)[1]


def add(ferry: Ferry, service: str, engine: str, endpoint: str, preprocess: Path, *model: str) -> None:
    ferry(
        "--id",
        service,
        "model",
        "add",
        "--engine",
        engine,
        "--endpoint",
        endpoint,
        "--preprocess",
        str(preprocess),
        *model,
    )


def iris(sample: list[float]) -> dict[str, float]:
    return {f"x{i}": value for i, value in enumerate(sample)}


def test_xgboost(e2e_ferry: Ferry, e2e_service: str, example_server: Server, tmp_path: Path) -> None:
    model = tmp_path / "xgb_model"  # native format, no extension
    train("xgboost", model)
    upload(e2e_ferry, "train xgboost model", model)
    preprocess = EXAMPLES / "xgboost" / "preprocess.py"
    add(
        e2e_ferry,
        e2e_service,
        "xgboost",
        "test_model_xgb",
        preprocess,
        "--name",
        "train xgboost model",
        "--project",
        PROJECT,
    )

    assert example_server.wait_endpoint("test_model_xgb", iris(SETOSA)) == {"y": [0]}
    assert example_server.serve("test_model_xgb", iris(VIRGINICA)).json() == {"y": [2]}


def test_lightgbm(e2e_ferry: Ferry, e2e_service: str, example_server: Server, tmp_path: Path) -> None:
    model = tmp_path / "lgbm_model"  # text format, no extension
    train("lightgbm", model)
    model_id = upload(e2e_ferry, "train lightgbm model", model)
    preprocess = EXAMPLES / "lightgbm" / "preprocess.py"
    add(e2e_ferry, e2e_service, "lightgbm", "test_model_lgbm", preprocess, "--model-id", model_id)

    assert example_server.wait_endpoint("test_model_lgbm", iris(SETOSA)) == {"y": 0}
    assert example_server.serve("test_model_lgbm", iris(VIRGINICA)).json() == {"y": 2}


def test_custom(e2e_ferry: Ferry, e2e_service: str, example_server: Server, tmp_path: Path) -> None:
    model = tmp_path / "custom-model.pkl"
    train("custom", model)
    upload(e2e_ferry, "custom model", model)
    preprocess = EXAMPLES / "custom" / "preprocess.py"
    add(
        e2e_ferry,
        e2e_service,
        "custom",
        "test_model_custom",
        preprocess,
        "--name",
        "custom model",
        "--project",
        PROJECT,
    )

    assert example_server.wait_endpoint("test_model_custom", {"features": [SETOSA, VIRGINICA]}) == {"y": [0, 2]}


def add_members(ferry: Ferry, service: str, tmp_path: Path, example: str, prefix: str) -> None:
    """Train the example's two models and serve them at <prefix>_a and <prefix>_b (sklearn example code)."""
    models = tmp_path / "model_a.pkl", tmp_path / "model_b.pkl"
    train(example, *models)
    for letter, model in zip("ab", models, strict=True):
        name = f"{example} model {letter}"
        upload(ferry, name, model)
        member = EXAMPLES / "sklearn" / "preprocess.py"
        add(ferry, service, "sklearn", f"{prefix}_{letter}", member, "--name", name, "--project", PROJECT)


def test_ensemble(e2e_ferry: Ferry, e2e_service: str, example_server: Server, tmp_path: Path) -> None:
    add_members(e2e_ferry, e2e_service, tmp_path, "ensemble", "ensemble")
    add(e2e_ferry, e2e_service, "custom", "test_model_ensemble", EXAMPLES / "ensemble" / "preprocess.py")

    body = {"x0": 2, "x1": -1}  # the data follow y = 3 x0 - 2 x1 + 1 = 9
    answer = example_server.wait_endpoint("test_model_ensemble", body)
    a = example_server.serve("ensemble_a", body).json()["y"]
    b = example_server.serve("ensemble_b", body).json()["y"]
    assert a != b, "the two members should be different models"
    assert answer == {"y": [pytest.approx((a[0] + b[0]) / 2)]}
    assert 8 < answer["y"][0] < 11


def test_pipeline_async(e2e_ferry: Ferry, e2e_service: str, example_server: Server, tmp_path: Path) -> None:
    add_members(e2e_ferry, e2e_service, tmp_path, "pipeline_async", "pipeline")
    preprocess = EXAMPLES / "pipeline_async" / "preprocess.py"
    add(e2e_ferry, e2e_service, "custom_async", "test_model_pipeline_async", preprocess)

    agree = {"x0": 1, "x1": 2}  # far from the boundary x0 + x1 = 0: both say 1
    assert example_server.wait_endpoint("test_model_pipeline_async", agree) == {
        "y": 1.0,
        "a": {"y": [1]},
        "b": {"y": [1]},
    }

    disagree = {"x0": -0.8, "x1": 0.6}  # near it, the linear model and the tree disagree
    a = example_server.serve("pipeline_a", disagree).json()
    b = example_server.serve("pipeline_b", disagree).json()
    assert a != b, "pick a body the two members disagree on"
    answer = example_server.serve("test_model_pipeline_async", disagree).json()
    assert answer == {"y": 0.5 * a["y"][0] + 0.5 * b["y"][0], "a": a, "b": b}
    assert answer["y"] == 0.5
