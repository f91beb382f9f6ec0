"""tritonclient's own HTTP client against a real `ferry serve`: V2 metadata, health, JSON and binary tensors, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Ferry
from tests.e2e.conftest import e2e_ferry, e2e_home, e2e_service  # noqa: F401
from tests.fuzz.conftest import BATCHED, ONNX_INPUT, plus_one_onnx, upload
from tests.server import Server

pytestmark = pytest.mark.e2e
httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sklearn"
TOKEN = "v2-e2e-token"


def auth() -> dict[str, str]:
    """A fresh headers dict per call: tritonclient's infer() adds its own headers to the dict it is given."""
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def v2_server(
    e2e_home: Path,  # noqa: F811
    e2e_ferry: Ferry,  # noqa: F811
    e2e_service: str,  # noqa: F811
    sklearn_example_model: Path,
) -> Iterator[Server]:
    """`ferry serve` (token-locked) with the sklearn example's model and a tiny ONNX model, each also batched."""
    root = e2e_home.parent
    sk, ox = (
        upload(e2e_ferry, "example", sklearn_example_model),
        upload(e2e_ferry, "plus_one", plus_one_onnx(root / "p.onnx")),
    )
    for name, extra in (("sk", ()), ("skb", BATCHED)):
        e2e_ferry("model", "add", "--engine", "sklearn", "--endpoint", name, "--model-id", sk,
                  "--preprocess", str(EXAMPLE / "preprocess.py"), *extra)  # fmt: skip
    for name, extra in (("ox", ()), ("oxb", BATCHED)):
        e2e_ferry("model", "add", "--engine", "onnxruntime", "--endpoint", name, "--model-id", ox, *ONNX_INPUT, *extra)
    server = Server(root, "--id", e2e_service, env={"FERRY_SERVE_TOKENS": TOKEN})
    try:
        server.wait_ready()
        server.client.headers.update(auth())
        for name in ("sk", "skb"):
            server.wait_endpoint(name, {"x0": 1, "x1": 2}, timeout=60)
        for name in ("ox", "oxb"):
            server.wait_endpoint(name, [[0, 0, 0]], timeout=60)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(v2_server: Server) -> Iterator[object]:
    triton = httpclient.InferenceServerClient(v2_server.url.removeprefix("http://"))
    yield triton
    triton.close()


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> object:
    given = httpclient.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=binary)
    return given


def test_server_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()  # open without a token, like /health/*
    meta = client.get_server_metadata(headers=auth())
    assert meta["name"] == "ferry" and meta["extensions"] == ["binary_tensor_data"]
    with pytest.raises(InferenceServerException, match="bearer token"):
        client.get_server_metadata()


def test_model_metadata_and_readiness(client):
    assert client.is_model_ready("sk", headers=auth()) and client.is_model_ready("ox", headers=auth())
    assert not client.is_model_ready("nope", headers=auth())
    sk = client.get_model_metadata("sk", headers=auth())
    assert sk["platform"] == "sklearn"
    assert sk["inputs"] == [{"name": "input__0", "datatype": "FP32", "shape": [-1, -1]}]
    assert sk["outputs"] == [{"name": "output__0", "datatype": "INT64", "shape": [-1]}]
    ox = client.get_model_metadata("ox", headers=auth())
    assert ox["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert ox["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]


@pytest.mark.parametrize("endpoint", ["sk", "skb"])
@pytest.mark.parametrize("binary", [False, True])
def test_sklearn_answers_what_serve_answers(client, v2_server, endpoint, binary):
    rows = np.array([[1, 2], [-1, -2], [3, -1], [-0.5, 0.2]], dtype=np.float32)
    wanted = httpclient.InferRequestedOutput("output__0", binary_data=binary)
    result = client.infer(endpoint, [infer_input("input__0", rows, "FP32", binary)], outputs=[wanted], headers=auth())
    served = [v2_server.serve(endpoint, {"x0": float(a), "x1": float(b)}).json()["y"][0] for a, b in rows]
    assert result.as_numpy("output__0").tolist() == served == [1, 0, 1, 0]
    assert result.get_response()["model_name"] == endpoint


@pytest.mark.parametrize("endpoint", ["ox", "oxb"])
@pytest.mark.parametrize("binary", [False, True])
def test_onnx_json_and_binary_tensors(client, v2_server, endpoint, binary):
    x = np.array([[1, 2, 3], [4.5, 5, 6]], dtype=np.float32)
    wanted = httpclient.InferRequestedOutput("y", binary_data=binary)
    result = client.infer(endpoint, [infer_input("x", x, "FP32", binary)], outputs=[wanted], headers=auth())
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    assert result.as_numpy("y").tolist() == v2_server.serve(endpoint, x.tolist()).json()


@pytest.mark.parametrize(
    ("endpoint", "name", "array", "datatype", "status", "text"),
    [
        ("nope", "x", np.ones((1, 3), np.float32), "FP32", "404", "no endpoint 'nope'"),
        ("ox", "x", np.ones((1, 4), np.float32), "FP32", "422", "input x takes shape [-1, 3]"),
        ("ox", "x", np.ones((1, 3), np.float64), "FP64", "422", "input x takes datatype FP32, got FP64"),
        ("ox", "z", np.ones((1, 3), np.float32), "FP32", "422", "has no input 'z'"),
        ("sk", "input__0", np.ones(2, np.float32), "FP32", "422", "input input__0 takes shape [-1, -1]"),
        ("sk", "input__0", np.array([[b"a", b"b"]], object), "BYTES", "422", "takes numbers"),
    ],
)
@pytest.mark.parametrize("binary", [False, True])
def test_errors_reach_tritonclient(client, endpoint, name, array, datatype, status, text, binary):
    with pytest.raises(InferenceServerException) as caught:
        client.infer(endpoint, [infer_input(name, array, datatype, binary)], headers=auth())
    assert caught.value.status() == status
    assert text in caught.value.message()


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [False, True])
def test_compressed_requests_are_inflated(client, compression, binary):
    """tritonclient's request_compression_algorithm: /v2 takes the encodings /serve takes."""
    x = np.array([[1, 2, 3], [4.5, 5, 6]], dtype=np.float32)
    wanted = httpclient.InferRequestedOutput("y", binary_data=binary)
    result = client.infer(
        "ox",
        [infer_input("x", x, "FP32", binary)],
        outputs=[wanted],
        headers=auth(),
        request_compression_algorithm=compression,
    )
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)


def test_v2_requests_are_counted_per_endpoint(client, v2_server):
    client.infer("oxb", [infer_input("x", np.zeros((1, 3), np.float32), "FP32", True)], headers=auth())
    metrics = v2_server.client.get("/metrics").text
    assert 'ferry_requests_total{code="200",endpoint="oxb",version=""}' in metrics
    assert 'ferry_requests_total{code="422",endpoint="ox",version=""}' in metrics


def test_ferry_is_the_model_engine_of_another_ferry(e2e_home, e2e_ferry):  # noqa: F811
    """A `triton` endpoint on one ferry runs its model on another ferry's V2 gRPC face: the same answer."""
    pytest.importorskip("grpc")
    from tests.conftest import free_port

    root = e2e_home.parent
    engine_service = e2e_ferry("create", "--name", "v2 engine").out.strip().rsplit("id=", 1)[1]
    front_service = e2e_ferry("create", "--name", "v2 front").out.strip().rsplit("id=", 1)[1]
    onnx = upload(e2e_ferry, "plus_one_again", plus_one_onnx(root / "p2.onnx"))
    e2e_ferry("--id", engine_service, "model", "add", "--engine", "onnxruntime", "--endpoint", "ox",
              "--model-id", onnx, *ONNX_INPUT)  # fmt: skip
    grpc_port = free_port()
    e2e_ferry("--id", front_service, "model", "add", "--engine", "triton", "--endpoint", "ox", "--model-id", onnx,
              "--aux-config", f"triton_grpc_server=127.0.0.1:{grpc_port}")  # fmt: skip
    engine = Server(root, "--id", engine_service, "--grpc-port", str(grpc_port))
    front = Server(root, "--id", front_service)
    try:
        engine.wait_ready()
        engine.wait_endpoint("ox", [[0, 0, 0]], timeout=60)
        front.wait_ready()
        x = [[1.0, 2.0, 3.0], [-1.0, 0.5, 7.0]]
        assert front.wait_endpoint("ox", x, timeout=60) == engine.serve("ox", x).json() == [[2, 3, 4], [0, 1.5, 8]]
    finally:
        front.stop()
        engine.stop()
