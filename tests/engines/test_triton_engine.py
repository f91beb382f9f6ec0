"""The triton engine against a real tritonserver: typed named inputs, outputs by name, Triton's errors as ferry's."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest

from ferry.control.spec import EndpointSpec, TensorSpec
from ferry.engines import load_engine
from ferry.errors import EngineError, FerryError
from ferry.serving.request.pipeline import EndpointRuntime
from tests.conftest import free_port
from tests.serving.conftest import Service
from tests.triton import Triton, python_model

pytest.importorskip("tritonclient.grpc.aio")
from ferry.engines.triton import ADDRESS_ENV, CHANNELS  # noqa: E402  (needs tritonclient)

DOUBLE_CONFIG = """
name: "double"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""
DOUBLE_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (x * 2).astype(np.float32))]))
        return answers
"""
GREET_CONFIG = """
name: "greet_2"
backend: "python"
max_batch_size: 8
input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]
output [
  { name: "length" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "upper" data_type: TYPE_STRING dims: [ 1 ] }
]
"""
GREET_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            length = np.array([[len(t)] for t in texts], dtype=np.int32)
            upper = np.array([[t.upper()] for t in texts], dtype=np.object_)
            tensors = [pb_utils.Tensor("length", length), pb_utils.Tensor("upper", upper)]
            answers.append(pb_utils.InferenceResponse(tensors))
        return answers
"""
PASS_THROUGH = """
import numpy as np

class Preprocess:
    def preprocess(self, body, state, collect=None):
        return body

    def postprocess(self, data, state, collect=None):
        arrays = data if isinstance(data, list) else [data]
        assert all(isinstance(a, np.ndarray) for a in arrays), [type(a) for a in arrays]
        return [{"dtype": str(a.dtype), "values": a.tolist()} for a in arrays]
"""


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    """One explicit-mode server for the module: idle stays in the repository unloaded, the others are loaded."""
    repository = tmp_path_factory.mktemp("triton") / "models"
    python_model(repository, "double", DOUBLE_CONFIG, DOUBLE_PY)
    python_model(repository, "greet_2", GREET_CONFIG, GREET_PY)
    for copy in ("idle", "follows"):
        python_model(repository, copy, DOUBLE_CONFIG.replace('"double"', f'"{copy}"'), DOUBLE_PY)
    with Triton(repository, explicit=True) as server:
        for name in ("double", "greet_2", "follows"):
            assert server.client.post(f"/v2/repository/models/{name}/load").status_code == 200, server.log()
        yield server


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


@pytest.fixture(scope="module")
def code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("code")
    (folder / "preprocess.py").write_text(textwrap.dedent(PASS_THROUGH))
    return folder


def double_spec(address: str, name: str = "double", dtype: str | None = "float32", shape=(-1, 2)) -> EndpointSpec:
    return EndpointSpec(
        name=name,
        engine="triton",
        model_id="m",
        inputs=(TensorSpec(name="x", dtype=dtype, shape=shape),),
        outputs=(TensorSpec(name="y", dtype="float32"),),
        aux_config={"triton_grpc_server": address, "max_batch_size": 8},
    )


def serve(spec: EndpointSpec, code: Path, pool: ThreadPoolExecutor, *bodies: object) -> list:
    """Build the runtime, send ``bodies`` concurrently on one loop, close it; answers or the errors raised."""
    runtime = EndpointRuntime.build(spec, None, code, None)

    async def all_of() -> list:
        return await asyncio.gather(*(runtime.run(body, pool) for body in bodies), return_exceptions=True)

    try:
        return asyncio.run(all_of())
    finally:
        runtime.close()


def failure(spec: EndpointSpec, code: Path, pool: ThreadPoolExecutor, body: object) -> FerryError:
    (answer,) = serve(spec, code, pool, body)
    assert isinstance(answer, FerryError), answer
    return answer


def test_inputs_are_cast_to_the_spec_and_outputs_come_back_as_arrays(triton, code, pool):
    """A list of ints becomes the declared FP32; postprocess gets the named output as a numpy array."""
    spec = double_spec(triton.grpc_address)
    (answer,) = serve(spec, code, pool, [[1, 2], [3, 4]])
    assert answer == [{"dtype": "float32", "values": [[2.0, 4.0], [6.0, 8.0]]}]
    assert serve(spec, code, pool, [5, 6]) == [[{"dtype": "float32", "values": [[10.0, 12.0]]}]]  # batch axis added


def test_strings_go_as_bytes_and_every_output_comes_back_from_the_metadata(triton, code, pool):
    """No tensors in the spec: names and types come from the server's metadata; two outputs come as a list."""
    spec = EndpointSpec(name="greet", version="2", engine="triton", model_id="m",
                        aux_config={"triton_grpc_server": triton.grpc_address})  # fmt: skip
    (answer,) = serve(spec, code, pool, [["hello"], ["ab"]])
    assert answer == [
        {"dtype": "int32", "values": [[5], [2]]},
        {"dtype": "object", "values": [[b"HELLO"], [b"AB"]]},
    ]


def test_server_down_is_503_naming_the_address(code, pool):
    address = f"127.0.0.1:{free_port()}"
    error = failure(double_spec(address), code, pool, [[1, 2]])
    assert error.status_code == 503 and error.retry_after > 0
    assert address in str(error) and "unreachable" in str(error), error


def test_unknown_or_unloaded_model_is_503_naming_server_and_model(triton, code, pool):
    for name in ("nothing", "idle"):  # not in the repository; in it but not loaded (explicit mode)
        error = failure(double_spec(triton.grpc_address, name=name), code, pool, [[1, 2]])
        assert error.status_code == 503, error
        assert triton.grpc_address in str(error) and f"model {name} is not ready" in str(error), error


def test_wrong_shape_or_type_is_422_with_tritons_reason(triton, code, pool):
    """Tensors the spec lets through but the model refuses: the request is at fault, Triton says why."""
    shape = failure(double_spec(triton.grpc_address, shape=None), code, pool, [[1, 2, 3]])
    assert shape.status_code == 422 and "unexpected shape for input 'x'" in str(shape), shape
    dtype = failure(double_spec(triton.grpc_address, dtype="float64"), code, pool, [[1, 2]])
    assert dtype.status_code == 422 and "data-type is 'FP64', but model 'double' expects 'FP32'" in str(dtype), dtype
    too_many = failure(double_spec(triton.grpc_address), code, pool, [[1, 2]] * 9)  # max_batch_size 8 is Triton's
    assert too_many.status_code == 422 and "batch-size must be <= 8" in str(too_many), too_many
    assert "[request id" not in str(dtype)


def test_the_address_falls_back_to_the_environment_else_says_how_to_set_it(monkeypatch):
    for name in ADDRESS_ENV:
        monkeypatch.delenv(name, raising=False)
    spec = EndpointSpec(name="e", engine="triton", model_id="m")
    with pytest.raises(EngineError, match=r"set it with `ferry config --triton-grpc-server HOST:PORT`"):
        load_engine(spec, None, None, None)
    monkeypatch.setenv("CLEARML_DEFAULT_TRITON_GRPC_ADDR", "10.0.0.7:8001")
    engine = load_engine(spec, None, None, None)
    assert (engine.address, engine.model) == ("10.0.0.7:8001", "e")
    engine.close()


def test_without_tritonclient_the_error_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "ferry.engines.triton")
    monkeypatch.setitem(sys.modules, "tritonclient.grpc.aio", None)
    with pytest.raises(EngineError, match=r"the triton engine needs tritonclient: pip install 'ferry\[triton\]'"):
        load_engine(double_spec("127.0.0.1:8001"), None, None, None)


def connections(port: int) -> int:
    return sum(1 for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port)


def test_requests_share_one_channel_which_close_releases(triton, code, pool):
    """64 concurrent requests over one client and one TCP connection; closing the last engine closes it."""
    runtime = EndpointRuntime.build(double_spec(triton.grpc_address), None, code, None)

    async def many() -> tuple[list, int, int]:
        answers = await asyncio.gather(*(runtime.run([[i, i]], pool) for i in range(64)))
        shared = (len(CHANNELS.clients(triton.grpc_address)), connections(triton.grpc_port))
        runtime.close()
        for _ in range(100):  # the close runs as a task on this loop
            await asyncio.sleep(0.02)
            if connections(triton.grpc_port) == 0:
                break
        return answers, *shared

    answers, clients, open_connections = asyncio.run(many())
    assert [a[0]["values"] for a in answers] == [[[2.0 * i, 2.0 * i]] for i in range(64)]
    assert (clients, open_connections) == (1, 1)
    assert CHANNELS.clients(triton.grpc_address) == [] and connections(triton.grpc_port) == 0


@pytest.fixture
def service(tmp_path: Path, ferry_home: Path) -> Iterator[Service]:
    svc = Service(tmp_path)
    yield svc
    svc.close()


def test_endpoint_address_overrides_the_service_and_a_new_service_address_reloads_only_triton(triton, service):
    """aux triton_grpc_server wins; `config --triton-grpc-server` rebuilds the triton endpoints that follow it."""
    model = service.model()
    tensors = {"inputs": (TensorSpec(name="x", dtype="float32"),), "outputs": (TensorSpec(name="y"),)}
    own = {"triton_grpc_server": triton.grpc_address}  # its own address: no service address needed
    service.add("double", engine="triton", model_id=model, aux_config=own, **tensors)
    dead = f"127.0.0.1:{free_port()}"
    service.control.configure(service.id, triton_grpc_server=dead)
    service.add("follows", engine="triton", model_id=model, **tensors)
    service.add("plain", engine="sklearn", model_id=model)
    service.apply()

    def infer(endpoint: str, body: object) -> object:
        return asyncio.run(service.plane.infer(endpoint, None, body))

    assert np.asarray(infer("double", [[1, 2]])).tolist() == [[2.0, 4.0]]
    with pytest.raises(FerryError) as down:
        infer("follows", [[1, 2]])
    assert down.value.status_code == 503 and dead in str(down.value)

    before = dict(service.plane.table.runtimes)
    service.apply()  # the same revision again: nothing is rebuilt
    assert all(service.plane.table.runtimes[k] is rt for k, rt in before.items())
    service.control.configure(service.id, triton_grpc_server=triton.grpc_address)
    service.apply()
    after = service.plane.table.runtimes
    assert [k for k in before if after[k] is not before[k]] == ["follows"]
    assert after["follows"].engine.address == triton.grpc_address
    assert np.asarray(infer("follows", [[1, 2]])).tolist() == [[2.0, 4.0]]
