"""aux compile=onnx: classic models converted to ONNX answer as the originals, or the original is served."""

from __future__ import annotations

import asyncio
import logging
import re

import joblib
import lightgbm
import numpy as np
import pytest
import xgboost
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression

from ferry.control.spec import EndpointSpec
from ferry.engines import load_engine
from ferry.engines.compiled import CompiledEngine
from ferry.engines.tensor import RowBatching, TensorEngine
from tests.serving.conftest import Service

pytest.importorskip("skl2onnx")
pytest.importorskip("onnxmltools")

COMPILE = {"compile": "onnx"}


def spec(engine: str, **aux) -> EndpointSpec:
    return EndpointSpec(name="c", version="1", engine=engine, model_id="m1", aux_config=aux)


class FirstFeatureSign(ClassifierMixin, BaseEstimator):
    """A classifier skl2onnx has no converter for."""

    def fit(self, x, y):
        self.classes_, self.n_features_in_ = np.unique(y), np.shape(x)[1]
        return self

    def predict(self, x):
        return (np.asarray(x)[:, 0] > 0).astype(int)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6))
    return x, (x[:, 0] + x[:, 1] > 0).astype(int), x[:, 2] * 3 + x[:, 3]


def models(x, y, target):
    return {
        "random_forest": ("sklearn", RandomForestClassifier(21, random_state=0).fit(x, y)),
        "forest_regressor": ("sklearn", RandomForestRegressor(10, max_depth=6, random_state=0).fit(x, target)),
        "logistic": ("sklearn", LogisticRegression().fit(x, y)),
        "xgb_classifier": ("xgboost", xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(x, y)),
        "xgb_booster": ("xgboost", xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(x, y), 10)),
        "lgbm_classifier": ("lightgbm", lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(x, y)),
        "lgbm_booster": (
            "lightgbm",
            lightgbm.train({"objective": "regression", "verbose": -1}, lightgbm.Dataset(x, target), 10),
        ),
    }


@pytest.mark.parametrize("name", list(models(*[np.zeros((4, 6)), np.array([0, 1, 0, 1]), np.zeros(4)])))
def test_compiled_model_answers_as_the_original(name, data, caplog):
    x, y, target = data
    engine_name, model = models(x, y, target)[name]
    original = load_engine(spec(engine_name), None, model, None)
    with caplog.at_level(logging.INFO, logger="ferry"):
        compiled = load_engine(spec(engine_name, **COMPILE), None, model, None)
    assert isinstance(compiled, CompiledEngine), caplog.text
    assert isinstance(compiled, TensorEngine) and isinstance(compiled, RowBatching)
    assert "endpoint c/1: compiled to ONNX, max abs difference" in caplog.text and "on 64 rows" in caplog.text
    rows = np.random.default_rng(7).normal(size=(50, 6))
    want, got = np.asarray(original.run(rows, {}, None)), np.asarray(compiled.run(rows.tolist(), {}, None))
    assert got.shape == want.shape and got.dtype == want.dtype
    if want.dtype.kind == "f":
        assert np.max(np.abs(got - want)) < 1e-4
    else:
        assert (got == want).all()
    batched = compiled.unwrap(compiled.run_tensors(compiled.prepare(rows[:3])))  # the batcher's path
    assert np.allclose(batched, want[:3], atol=1e-4)


def test_predict_proba_is_compiled_too(data):
    x, y, _ = data
    model = LogisticRegression().fit(x, y)
    compiled = load_engine(spec("sklearn", method="predict_proba", **COMPILE), None, model, None)
    assert isinstance(compiled, CompiledEngine)
    assert np.abs(compiled.run(x[:20], {}, None) - model.predict_proba(x[:20])).max() < 1e-4


def test_unknown_model_is_served_by_its_own_engine_with_the_reason(data, caplog):
    x, y, _ = data
    model = FirstFeatureSign().fit(x, y)
    with caplog.at_level(logging.INFO, logger="ferry"):
        engine = load_engine(spec("sklearn", **COMPILE), None, model, None)
    assert not isinstance(engine, CompiledEngine)
    assert "not compiled to ONNX" in caplog.text and "skl2onnx does not know FirstFeatureSign" in caplog.text
    assert engine.run(x[:5], {}, None).tolist() == model.predict(x[:5]).tolist()


def test_difference_over_the_tolerance_is_refused(data, caplog):
    x, _, target = data
    model = RandomForestRegressor(10, random_state=0).fit(x, target * 1e6)  # float32 graph: differences ~0.1
    with caplog.at_level(logging.INFO, logger="ferry"):
        strict = load_engine(spec("sklearn", compile_tolerance=0.0, **COMPILE), None, model, None)
    assert not isinstance(strict, CompiledEngine)
    assert "over compile_tolerance=0 (raise compile_tolerance to accept it)" in caplog.text
    loose = load_engine(spec("sklearn", compile_tolerance=10.0, **COMPILE), None, model, None)
    assert isinstance(loose, CompiledEngine)


def test_warmup_rows_are_the_sample(data, caplog):
    x, y, _ = data
    model = LogisticRegression().fit(x, y)
    with caplog.at_level(logging.INFO, logger="ferry"):
        load_engine(spec("sklearn", warmup=x[:5].tolist(), **COMPILE), None, model, None)
    assert re.search(r"compiled to ONNX, max abs difference \S+ on 5 rows", caplog.text)


def test_classifier_probabilities_are_checked_as_well_as_labels(data, caplog):
    x, y, _ = data
    model = LogisticRegression().fit(x, y)  # labels always agree; float32 probabilities differ by ~1e-8
    with caplog.at_level(logging.INFO, logger="ferry"):
        engine = load_engine(spec("sklearn", compile_tolerance=0.0, **COMPILE), None, model, None)
    assert not isinstance(engine, CompiledEngine)
    assert "over compile_tolerance=0" in caplog.text


@pytest.fixture
def service(tmp_path, ferry_home):
    svc = Service(tmp_path)
    yield svc
    svc.close()


def test_compiled_endpoint_serves_batched_requests_through_the_data_plane(service, tmp_path, data):
    x, y, _ = data
    path = tmp_path / "forest.pkl"
    model = RandomForestClassifier(21, random_state=0).fit(x, y)
    joblib.dump(model, path)
    mid = service.registry.upload("forest", path=path).id
    service.add(
        "forest", "sklearn", model_id=mid, aux_config={**COMPILE, "max_batch_size": 8, "max_queue_delay_ms": 20}
    )
    service.apply()
    runtime = service.plane.model("forest")
    assert isinstance(runtime.engine, CompiledEngine) and runtime.batcher is not None

    async def go():
        service.plane.loop = asyncio.get_running_loop()
        return await asyncio.gather(*(service.plane.infer("forest", None, [row]) for row in x[:12].tolist()))

    answers = asyncio.run(go())
    assert [np.asarray(a).tolist() for a in answers] == [[label] for label in model.predict(x[:12]).tolist()]
