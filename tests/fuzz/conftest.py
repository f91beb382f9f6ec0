"""One real `ferry serve` for the fuzz tests, with sklearn, onnxruntime, custom and custom_async endpoints."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tests.conftest import Ferry
from tests.e2e.conftest import e2e_ferry, e2e_home, e2e_service  # noqa: F401 - the module-scoped e2e fixtures
from tests.server import Server

SKLEARN_CODE = Path(__file__).parents[2] / "examples" / "sklearn" / "preprocess.py"
CUSTOM_CODE = """
    class Preprocess:
        def process(self, data, state, collect=None):
            return {"sum": sum(data["values"])}
"""
ASYNC_CODE = """
    import asyncio
    class Preprocess:
        async def process(self, data, state, collect=None):
            await asyncio.sleep(0)
            return {"count": len(data["values"])}
"""
ONNX_INPUT = ("--input-name", "x", "--input-type", "float32", "--input-size", "[-1, 3]")
BATCHED = ("--aux-config", "max_batch_size=8", "max_queue_delay_ms=2")

GOOD_REQUESTS = {
    "sk": ({"x0": 1, "x1": 2}, {"y": [1]}),
    "skb": ({"x0": -1, "x1": -2}, {"y": [0]}),
    "ox": ([[1, 2, 3]], [[2.0, 3.0, 4.0]]),
    "oxb": ({"x": [4, 5, 6]}, [[5.0, 6.0, 7.0]]),
    "cu": ({"values": [1, 2, 3.5]}, {"sum": 6.5}),
    "ca": ({"values": [1, 2, 3]}, {"count": 3}),
}
"""Per endpoint: a request it must answer and the answer, before and after the fuzzing."""


def plus_one_onnx(path: Path) -> Path:
    """y = x + 1 over x[batch, 3] float32."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "plus_one", [x], [y], initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def logreg(path: Path) -> Path:
    """Class 1 when x0 + x1 > 0."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    joblib.dump(LogisticRegression().fit(x, (x.sum(axis=1) > 0).astype(int)), path)
    return path


def upload(ferry: Ferry, name: str, path: Path) -> str:
    return (
        ferry("model", "upload", "--name", name, "--project", "fuzz", "--path", str(path)).out.strip().rsplit("=")[-1]
    )


def write(folder: Path, name: str, source: str) -> str:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


@pytest.fixture(scope="module")
def fuzz_server(e2e_home: Path, e2e_ferry: Ferry, e2e_service: str) -> Iterator[Server]:  # noqa: F811
    """`ferry serve` with every fuzzed endpoint answering its good request."""
    root = e2e_home.parent
    sk = upload(e2e_ferry, "logreg", logreg(root / "logreg.pkl"))
    ox = upload(e2e_ferry, "plus_one", plus_one_onnx(root / "plus_one.onnx"))
    for name, extra in (("sk", ()), ("skb", BATCHED)):
        e2e_ferry("model", "add", "--engine", "sklearn", "--endpoint", name, "--model-id", sk,
                  "--preprocess", str(SKLEARN_CODE), *extra)  # fmt: skip
    for name, extra in (("ox", ()), ("oxb", BATCHED)):
        e2e_ferry("model", "add", "--engine", "onnxruntime", "--endpoint", name, "--model-id", ox, *ONNX_INPUT, *extra)
    e2e_ferry("model", "add", "--engine", "custom", "--endpoint", "cu", "--preprocess", write(root, "cu", CUSTOM_CODE))
    e2e_ferry("model", "add", "--engine", "custom_async", "--endpoint", "ca",
              "--preprocess", write(root, "ca", ASYNC_CODE))  # fmt: skip
    server = Server(root, "--id", e2e_service)
    try:
        server.wait_ready()
        for endpoint, (body, answer) in GOOD_REQUESTS.items():
            assert server.wait_endpoint(endpoint, body, timeout=60) == answer
        yield server
    finally:
        server.stop()
