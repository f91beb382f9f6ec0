"""The KServe V2 gRPC servicer over a real grpc.aio server in-process, called by tritonclient's asyncio client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from tritonclient.grpc import InferenceServerException, service_pb2, service_pb2_grpc
from tritonclient.grpc.aio import InferenceServerClient, InferInput, InferRequestedOutput

from ferry.control.spec import TensorSpec
from ferry.errors import InvalidInput
from ferry.grpc.server import bind
from ferry.grpc.tensors import from_raw, to_raw
from ferry.rest.auth import BearerAuth
from tests.conftest import free_port
from tests.fuzz.conftest import plus_one_onnx
from tests.serving.conftest import Service, service  # noqa: F401 - the data-plane fixture

pytestmark = pytest.mark.anyio
TOKEN = "grpc-test-token"
X = np.array([[1.0, 2.0], [-1.0, -2.0]], dtype=np.float32)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def labelled_model(root: Path, registry) -> str:
    """A LogisticRegression whose classes are strings: its V2 output is BYTES."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    joblib.dump(LogisticRegression().fit(x, np.where(x.sum(axis=1) > 0, "pos", "neg")), root / "labels.pkl")
    return registry.upload("labels", path=root / "labels.pkl", project="tests").id


@pytest.fixture
def endpoints(service: Service) -> Service:  # noqa: F811
    """sk (sklearn, input x FP32 [-1, 2]), labels (string classes), ox and oxb (ONNX x + 1, oxb batched), cu."""
    x = (TensorSpec(name="x", dtype="float32", shape=(-1, 2)),)
    service.add("sk", engine="sklearn", model_id=service.model(), inputs=x)
    service.add("labels", engine="sklearn", model_id=labelled_model(service.root, service.registry))
    onnx = service.registry.upload("plus_one", path=plus_one_onnx(service.root / "p.onnx"), project="tests").id
    ox = (TensorSpec(name="x", dtype="float32", shape=(-1, 3)),)
    service.add("ox", engine="onnxruntime", model_id=onnx, inputs=ox)
    service.add("oxb", engine="onnxruntime", model_id=onnx, inputs=ox, aux_config={"max_batch_size": 8})
    service.add("cu", code=service.code("class Preprocess:\n    def process(self, d, s, c=None):\n        return d\n"))
    service.apply()
    return service


async def serving(plane, gate=None) -> tuple[grpc.aio.Server, str]:
    address = f"127.0.0.1:{free_port()}"
    server = bind(plane, address, gate)
    await server.start()
    return server, address


@pytest.fixture
async def client(endpoints: Service):
    endpoints.plane.loop = asyncio.get_running_loop()
    server, address = await serving(endpoints.plane)
    client = InferenceServerClient(address)
    yield client
    await client.close()
    await server.stop(None)


def tensor(name: str, array: np.ndarray, datatype: str = "FP32") -> InferInput:
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


async def refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        await call
    return info.value


async def test_probes_and_metadata(client: InferenceServerClient):
    assert await client.is_server_live() and await client.is_server_ready()
    assert (await client.get_server_metadata()).name == "ferry"
    assert await client.is_model_ready("sk") and await client.is_model_ready("ox", "")
    assert not await client.is_model_ready("nope")
    meta = await client.get_model_metadata("ox", as_json=True)
    assert meta["platform"] == "onnxruntime"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "3"]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["-1", "3"]}]
    meta = await client.get_model_metadata("labels", as_json=True)
    assert meta["inputs"][0]["name"] == "input__0" and meta["outputs"][0]["datatype"] == "BYTES"


async def test_infer_sklearn_onnx_and_bytes(client: InferenceServerClient):
    answer = await client.infer("sk", [tensor("x", X)], request_id="req-1")
    assert answer.as_numpy("output__0").tolist() == [1, 0]
    assert answer.get_response().id == "req-1" and answer.get_response().model_name == "sk"
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    for endpoint in ("ox", "oxb"):
        answer = await client.infer(endpoint, [tensor("x", rows)], outputs=[InferRequestedOutput("y")])
        np.testing.assert_array_equal(answer.as_numpy("y"), rows + 1)
    answer = await client.infer("labels", [tensor("input__0", X.astype(np.float64), "FP64")])
    assert answer.as_numpy("output__0").tolist() == [b"pos", b"neg"]


async def test_batched_endpoint_gives_each_request_its_rows(client: InferenceServerClient):
    requests = [np.full((i % 3 + 1, 3), i, dtype=np.float32) for i in range(12)]
    answers = await asyncio.gather(*(client.infer("oxb", [tensor("x", r)]) for r in requests))
    for rows, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer.as_numpy("y"), rows + 1)


async def test_typed_contents_answer_like_raw_bytes(endpoints: Service):  # noqa: F811
    endpoints.plane.loop = asyncio.get_running_loop()
    server, address = await serving(endpoints.plane)
    request = service_pb2.ModelInferRequest(model_name="ox")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            answer = await service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    finally:
        await server.stop(None)
    assert [o.name for o in answer.outputs] == ["y"] and list(answer.outputs[0].shape) == [1, 3]
    assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [2, 3, 4]


async def test_a_version_that_failed_to_load_is_unavailable_with_retry_after(service: Service):  # noqa: F811
    (service.root / "bad.pkl").write_bytes(b"not a pickle")
    service.add("broken", engine="sklearn", model_id=service.registry.upload("bad", path=service.root / "bad.pkl").id)
    service.apply()
    service.plane.loop = asyncio.get_running_loop()
    server, address = await serving(service.plane)
    request = service_pb2.ModelInferRequest(model_name="broken")
    request.inputs.add(name="input__0", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([1, 2])
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert not (await stub.ModelReady(service_pb2.ModelReadyRequest(name="broken"))).ready
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(request)
    finally:
        await server.stop(None)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "broken" in info.value.details()
    assert str(service.root) not in info.value.details()  # like REST: no local path in an answer
    assert int(dict(info.value.trailing_metadata())["retry-after"]) >= 1  # as REST's Retry-After header


async def test_errors_carry_their_grpc_code_and_ferry_message(client: InferenceServerClient):
    error = await refused(client.infer("nope", [tensor("x", X)]))
    assert error.status() == "StatusCode.NOT_FOUND" and "nope" in error.message()
    error = await refused(client.infer("ox", [tensor("x", np.ones((1, 4), np.float32))]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "shape [-1, 3]" in error.message()
    error = await refused(client.infer("ox", [tensor("x", np.ones((1, 3), np.float64), "FP64")]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "datatype FP32, got FP64" in error.message()
    error = await refused(client.infer("ox", [tensor("z", np.ones((1, 3), np.float32))]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "has no input 'z'" in error.message()
    error = await refused(client.infer("ox", [tensor("x", X[:, :1].repeat(3, 1))], outputs=[InferRequestedOutput("q")]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "no output 'q'" in error.message()
    error = await refused(client.infer("cu", [tensor("x", X)]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "/serve/cu" in error.message()
    error = await refused(client.get_model_metadata("nope"))
    assert error.status() == "StatusCode.NOT_FOUND"


async def test_raw_bytes_that_do_not_fill_the_shape_are_refused(client: InferenceServerClient):
    short = tensor("x", np.ones((1, 3), np.float32))
    short.set_shape([2, 3])  # tritonclient checks the shape only when the data is set: 12 bytes for 24
    error = await refused(client.infer("ox", [short]))
    assert (
        error.status() == "StatusCode.INVALID_ARGUMENT" and "12 raw bytes do not fill shape [2, 3]" in error.message()
    )


async def test_tokens_lock_everything_but_the_probes(endpoints: Service):  # noqa: F811
    endpoints.plane.loop = asyncio.get_running_loop()
    server, address = await serving(endpoints.plane, BearerAuth({TOKEN}))
    client = InferenceServerClient(address)
    try:
        assert await client.is_server_live() and await client.is_server_ready()  # open, like /v2/health/*
        error = await refused(client.infer("ox", [tensor("x", np.ones((1, 3), np.float32))]))
        assert error.status() == "StatusCode.UNAUTHENTICATED" and "Authorization: Bearer" in error.message()
        wrong = {"authorization": "Bearer guessed"}
        error = await refused(client.get_model_metadata("ox", headers=wrong))
        assert error.status() == "StatusCode.PERMISSION_DENIED"
        error = await refused(client.is_model_ready("ox"))
        assert error.status() == "StatusCode.UNAUTHENTICATED"
        headers = {"authorization": f"Bearer {TOKEN}"}
        answer = await client.infer("ox", [tensor("x", np.ones((1, 3), np.float32))], headers=headers)
        assert answer.as_numpy("y").tolist() == [[2, 2, 2]]
    finally:
        await client.close()
        await server.stop(None)


def test_bytes_round_trip_and_broken_prefixes():
    values = np.array([b"", "ünï".encode(), b"\x00" * 5], dtype=object)
    raw = to_raw(values)
    assert raw[:4] == b"\x00\x00\x00\x00" and len(raw) == 3 * 4 + 0 + 5 + 5
    assert from_raw(raw, "BYTES", np.dtype(object), [3], "t").tolist() == values.tolist()
    assert to_raw(np.array(["ab"])) == b"\x02\x00\x00\x00ab"
    with pytest.raises(InvalidInput, match="inside a 4-byte length prefix"):
        from_raw(raw + b"\x01", "BYTES", np.dtype(object), [4], "t")
    with pytest.raises(InvalidInput, match="runs past the end"):
        from_raw(b"\x09\x00\x00\x00abc", "BYTES", np.dtype(object), [1], "t")
    assert to_raw(np.array([1, 2], dtype=">i4")) == np.array([1, 2], dtype="<i4").tobytes()
