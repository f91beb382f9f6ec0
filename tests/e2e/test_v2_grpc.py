"""`ferry serve --grpc-port` called by tritonclient's own gRPC client: the sklearn example and an ONNX model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from tritonclient.grpc import InferenceServerClient, InferenceServerException, InferInput, InferRequestedOutput

from tests.conftest import Ferry, free_port
from tests.fuzz.conftest import ONNX_INPUT, plus_one_onnx
from tests.server import Server

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).parents[2] / "examples" / "sklearn"
SKLEARN = "test_model_sklearn"
TOKEN = "grpc-e2e-token"
ROWS = np.array([[1.0, 2.0], [-1.0, -2.0], [0.5, -0.2], [-3.0, 3.5]])


def upload(ferry: Ferry, *args: str) -> str:
    return ferry("model", "upload", *args).out.strip().rsplit("=", 1)[-1]


def add_endpoints(ferry: Ferry, root: Path, model: Path) -> None:
    """The sklearn example's ``model`` as its README adds it, and an ONNX y = x + 1 on x[batch, 3] as `ox`."""
    project = ("--name", "train sklearn model", "--project", "serving examples")
    upload(ferry, *project, "--framework", "sklearn", "--path", str(model))
    ferry("model", "add", "--engine", "sklearn", "--endpoint", SKLEARN,
          "--preprocess", str(EXAMPLE / "preprocess.py"), *project)  # fmt: skip
    onnx = upload(ferry, "--name", "plus_one", "--project", "v2", "--path", str(plus_one_onnx(root / "p.onnx")))
    ferry("model", "add", "--engine", "onnxruntime", "--endpoint", "ox", "--model-id", onnx, *ONNX_INPUT)


class GrpcServer(Server):
    """`ferry serve --grpc-port` on free ports."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.grpc_port = free_port()
        super().__init__(root, "--grpc-port", str(self.grpc_port), *args, env=env)
        self.grpc = InferenceServerClient(f"127.0.0.1:{self.grpc_port}")

    def stop(self, *args) -> int:
        self.grpc.close()
        return super().stop(*args)


@pytest.fixture(scope="module")
def root(e2e_home: Path, e2e_ferry: Ferry, e2e_service: str, sklearn_example_model: Path) -> Path:
    add_endpoints(e2e_ferry, e2e_home.parent, sklearn_example_model)
    return e2e_home.parent


@pytest.fixture(scope="module")
def server(root: Path, e2e_service: str) -> Iterator[GrpcServer]:
    server = GrpcServer(root, "--id", e2e_service)
    try:
        server.wait_ready()
        server.wait_endpoint(SKLEARN, {"x0": 1, "x1": 2}, timeout=60)
        server.wait_endpoint("ox", [[1, 2, 3]], timeout=60)
        yield server
    finally:
        server.stop()


def tensor(name: str, array: np.ndarray, datatype: str) -> InferInput:
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def refused(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def test_probes_and_metadata(server: GrpcServer):
    client = server.grpc
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata(as_json=True)["name"] == "ferry"
    assert client.is_model_ready(SKLEARN) and client.is_model_ready("ox") and not client.is_model_ready("nope")
    meta = client.get_model_metadata(SKLEARN, as_json=True)
    assert (meta["name"], meta["platform"]) == (SKLEARN, "sklearn")
    assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("input__0", ["-1", "-1"])]
    meta = client.get_model_metadata("ox", as_json=True)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "3"]}]


def test_infer_answers_as_serve_does(server: GrpcServer):
    """Binary tensors (tritonclient's raw_input_contents) in and out; the same answer as POST /serve."""
    answer = server.grpc.infer(SKLEARN, [tensor("input__0", ROWS, "FP64")], request_id="r1")
    assert answer.get_response().id == "r1"
    served = [server.serve(SKLEARN, {"x0": x0, "x1": x1}).json()["y"][0] for x0, x1 in ROWS]
    assert answer.as_numpy("output__0").tolist() == served == [1, 0, 1, 1]
    rows = np.array([[1, 2, 3], [-4, 0.5, 9]], dtype=np.float32)
    answer = server.grpc.infer("ox", [tensor("x", rows, "FP32")], outputs=[InferRequestedOutput("y")])
    assert answer.as_numpy("y").tolist() == server.serve("ox", rows.tolist()).json() == (rows + 1).tolist()


def test_errors(server: GrpcServer):
    error = refused(server.grpc.infer, "nope", [tensor("x", np.ones((1, 3), np.float32), "FP32")])
    assert error.status() == "StatusCode.NOT_FOUND" and "nope" in error.message()
    error = refused(server.grpc.infer, "ox", [tensor("x", np.ones((2, 2), np.float32), "FP32")])
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "takes shape [-1, 3]" in error.message()
    error = refused(server.grpc.infer, "ox", [tensor("x", np.ones((1, 3), np.int32), "INT32")])
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "datatype FP32, got INT32" in error.message()
    error = refused(server.grpc.get_model_metadata, "nope")
    assert error.status() == "StatusCode.NOT_FOUND"


def test_two_workers_share_the_port_and_tokens_lock_it(root: Path, e2e_service: str):
    server = GrpcServer(root, "--id", e2e_service, "--workers", "2", env={"FERRY_SERVE_TOKENS": TOKEN})
    headers = {"authorization": f"Bearer {TOKEN}"}
    try:
        server.wait_ready()
        server.wait_for(lambda: len(listeners(server)) == 2, 30, "both workers listening on the gRPC port")
        assert server.grpc.is_server_live() and server.grpc.is_server_ready()  # the probes stay open
        error = refused(server.grpc.infer, "ox", [tensor("x", np.ones((1, 3), np.float32), "FP32")])
        assert error.status() == "StatusCode.UNAUTHENTICATED"
        error = refused(server.grpc.get_model_metadata, "ox", headers={"authorization": "Bearer guessed"})
        assert error.status() == "StatusCode.PERMISSION_DENIED"
        for i in range(8):  # a new channel each time: the kernel spreads connections over both workers
            client = InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
            rows = np.full((1, 3), i, dtype=np.float32)
            answer = client.infer("ox", [tensor("x", rows, "FP32")], headers=headers)
            assert answer.as_numpy("y").tolist() == (rows + 1).tolist()
            client.close()
    finally:
        server.stop()


def listeners(server: GrpcServer) -> set[int]:
    """The worker processes listening on the gRPC port."""
    found = set()
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            conns = child.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == server.grpc_port for c in conns):
            found.add(child.pid)
    return found


def test_grpc_port_without_the_extra_fails_in_one_line(ferry_sqlite: Ferry, tmp_path: Path):
    ferry_sqlite.service()
    shadow = tmp_path / "shadow" / "grpc"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named grpc')\n")  # grpcio not installed
    result = ferry_sqlite(
        "serve", "--grpc-port", str(free_port()), ok=False, process=True, env={"PYTHONPATH": str(shadow.parent)}
    )
    assert result.err.strip().splitlines()[-1].endswith("pip install 'ferry[triton]'")
