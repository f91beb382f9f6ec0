"""Engines on tiny real models: sklearn, xgboost, lightgbm, custom and custom_async."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import joblib
import lightgbm
import numpy as np
import pytest
import xgboost
from sklearn.linear_model import LogisticRegression

from ferry.control.spec import ENGINE_NAMES, EndpointSpec
from ferry.engines import ENGINES, load_engine
from ferry.engines.loading import preload
from ferry.errors import EngineError

NO_CODE = None  # no user code: no process hook


def spec(engine: str, **fields) -> EndpointSpec:
    return EndpointSpec(name="e", version="1", engine=engine, model_id="m1", **fields)


def user_with_process(fn):
    return fn


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    x = rng.random((50, 4))
    return x, (x[:, 0] > 0.5).astype(int), (x[:, 1] * 3).astype(int)


@pytest.fixture(scope="module")
def sklearn_file(rows, tmp_path_factory):
    x, y, _ = rows
    path = tmp_path_factory.mktemp("sk") / "model.pkl"
    joblib.dump(LogisticRegression().fit(x, y), path)
    return path


@pytest.fixture(scope="module")
def booster(rows):
    x, y, _ = rows
    return xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(x, label=y), num_boost_round=3)


def test_table_covers_engine_names():
    assert set(ENGINES) == set(ENGINE_NAMES)


def test_import_does_not_load_heavy_libraries():
    code = "import sys, ferry.engines; assert not {'xgboost', 'lightgbm'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_library_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "ferry.engines.xgboost", raising=False)
    monkeypatch.setitem(sys.modules, "xgboost", None)
    with pytest.raises(EngineError, match=r"the xgboost engine needs xgboost: pip install 'ferry\[xgboost\]'"):
        load_engine(spec("xgboost"), Path("xgb_model"), None, NO_CODE)


def test_sklearn_predict_on_a_nested_list(rows, sklearn_file):
    x, y, _ = rows
    engine = load_engine(spec("sklearn"), sklearn_file, None, NO_CODE)
    assert not engine.is_async
    assert engine.run(x.tolist(), {}, None).tolist() == joblib.load(sklearn_file).predict(x).tolist()


def test_sklearn_method_from_aux_config(rows, sklearn_file):
    engine = load_engine(spec("sklearn", aux_config={"method": "predict_proba"}), sklearn_file, None, NO_CODE)
    proba = engine.run(rows[0][:5], {}, None)
    assert proba.shape == (5, 2) and np.allclose(proba.sum(axis=1), 1)


def test_sklearn_unknown_method_fails_at_load(sklearn_file):
    with pytest.raises(EngineError, match="no method 'transform_all'"):
        load_engine(spec("sklearn", aux_config={"method": "transform_all"}), sklearn_file, None, NO_CODE)


def test_sklearn_plain_pickle(rows, tmp_path):
    import pickle

    path = tmp_path / "model.pickle"
    path.write_bytes(pickle.dumps(LogisticRegression().fit(rows[0], rows[1])))
    assert load_engine(spec("sklearn"), path, None, NO_CODE).run(rows[0][:3], {}, None).shape == (3,)


def test_loaded_model_overrides_the_file(rows, tmp_path):
    corrupt = tmp_path / "model.pkl"
    corrupt.write_bytes(b"not a model")
    model = LogisticRegression().fit(rows[0], rows[1])
    engine = load_engine(spec("sklearn"), corrupt, model, NO_CODE)
    assert engine.run(rows[0][:4], {}, None).tolist() == model.predict(rows[0][:4]).tolist()


def test_run_time_errors_propagate(sklearn_file):
    engine = load_engine(spec("sklearn"), sklearn_file, None, NO_CODE)
    with pytest.raises(ValueError):
        engine.run([[1.0, 2.0]], {}, None)


@pytest.mark.parametrize("fmt", ["json", "ubj"])
def test_xgboost_native_file_without_extension(rows, booster, tmp_path, fmt):
    saved = tmp_path / f"model.{fmt}"
    booster.save_model(saved)
    path = tmp_path / "xgb_model"
    saved.rename(path)
    engine = load_engine(spec("xgboost"), path, None, NO_CODE)
    expected = booster.predict(xgboost.DMatrix(rows[0]))
    assert np.allclose(engine.run(rows[0].tolist(), {}, None), expected)


def test_xgboost_dmatrix_from_preprocess_passes_as_is(rows, booster, tmp_path):
    path = tmp_path / "xgb_model.json"
    booster.save_model(path)
    engine = load_engine(spec("xgboost"), path, None, NO_CODE)
    matrix = xgboost.DMatrix(rows[0])
    assert np.allclose(engine.run(matrix, {}, None), booster.predict(matrix))


def test_xgboost_pickled_classifier(rows, tmp_path):
    x, y, _ = rows
    model = xgboost.XGBClassifier(n_estimators=3).fit(x, y)
    path = tmp_path / "xgb_model"
    joblib.dump(model, path)
    engine = load_engine(spec("xgboost"), path, None, NO_CODE)
    assert engine.run(x.tolist(), {}, None).tolist() == model.predict(x).tolist()
    assert engine.run(xgboost.DMatrix(x), {}, None).shape == (50,)


def test_lightgbm_multiclass_text_file(rows, tmp_path):
    x, _, labels = rows
    params = {"objective": "multiclass", "num_class": 3, "min_data_in_leaf": 5, "verbose": -1}
    model = lightgbm.train(params, lightgbm.Dataset(x, label=labels), num_boost_round=3)
    path = tmp_path / "lgbm_model"
    model.save_model(path)
    engine = load_engine(spec("lightgbm"), path, None, NO_CODE)
    proba = engine.run(x[:6].tolist(), {}, None)
    assert proba.shape == (6, 3) and np.allclose(proba.sum(axis=1), 1)


def test_lightgbm_pickled_sklearn_model(rows, tmp_path):
    x, y, _ = rows
    model = lightgbm.LGBMClassifier(n_estimators=3, min_child_samples=5, verbose=-1).fit(x, y)
    path = tmp_path / "model.pkl"
    joblib.dump(model, path)
    assert load_engine(spec("lightgbm"), path, None, NO_CODE).run(x, {}, None).tolist() == (model.predict(x).tolist())


@pytest.mark.parametrize("engine", ["sklearn", "xgboost", "lightgbm"])
def test_corrupt_model_file_names_the_endpoint(tmp_path, engine):
    path = tmp_path / "broken_model"
    path.write_bytes(b"\x80\x04 truncated")
    with pytest.raises(EngineError) as info:
        load_engine(spec(engine), path, None, NO_CODE)
    assert "e/1" in str(info.value) and str(path) in str(info.value)


def test_missing_model_file_is_an_engine_error():
    with pytest.raises(EngineError, match="e/1.*needs a model file"):
        load_engine(spec("sklearn"), None, None, NO_CODE)


def test_custom_calls_process():
    seen = []

    def process(data, state, collect):
        seen.append((state, collect))
        return data * 2

    engine = load_engine(spec("custom"), None, None, user_with_process(process))
    assert not engine.is_async and engine.run(21, {"k": 1}, None) == 42
    assert seen == [({"k": 1}, None)]


def test_custom_with_async_process_is_async():
    async def process(data, state, collect):
        return data + 1

    engine = load_engine(spec("custom"), None, None, user_with_process(process))
    assert engine.is_async and asyncio.run(engine.run(1, {}, None)) == 2


@pytest.mark.parametrize("is_async", [True, False])
def test_custom_async_always_returns_an_awaitable(is_async):
    def process(data, state, collect):
        return data + 1

    async def aprocess(data, state, collect):
        return data + 1

    engine = load_engine(spec("custom_async"), None, None, user_with_process(aprocess if is_async else process))
    assert engine.is_async and asyncio.run(engine.run(1, {}, None)) == 2


@pytest.mark.parametrize("name", ["custom", "custom_async"])
def test_custom_without_process_fails_at_load(name):
    with pytest.raises(EngineError, match="engine needs Preprocess.process"):
        load_engine(EndpointSpec(name="e", version="1", engine=name), None, None, NO_CODE)


def test_preload_imports_what_a_later_sklearn_load_would(sklearn_file):
    """A fresh process: after ``preload`` the engine's library is in, and loading a version imports little."""
    script = f"""
import sys, time
from ferry.engines.loading import preload
preload("sklearn")
assert "sklearn.base" in sys.modules
before = len(sys.modules)
from ferry.control.spec import EndpointSpec
from ferry.engines import load_engine
from pathlib import Path
spec = EndpointSpec(name="e", version="1", engine="sklearn", model_id="m1")
load_engine(spec, Path({str(sklearn_file)!r}), None, None)
print(len(sys.modules) - before)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 300, "loading the model imported what preload should have"  # without: ~1,000


def test_preload_of_an_unknown_engine_names_it():
    with pytest.raises(EngineError, match="engine nope is not available"):
        preload("nope")
