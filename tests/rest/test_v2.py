"""The Open Inference Protocol (V2) routes in-process: metadata, health, JSON and binary tensors, every error."""

from __future__ import annotations

import struct

import httpx
import numpy as np
import pytest

from ferry import __version__
from ferry.control.spec import TensorSpec
from ferry.metrics.collectors import Metrics
from ferry.rest.app import FerryApp
from ferry.serving.request.dataplane import DataPlane
from tests.rest.test_errors import plus_one

pytestmark = pytest.mark.anyio
tritonhttp = pytest.importorskip("tritonclient.http")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ROW_CODE = "class Preprocess:\n    def preprocess(self, body, state, collect=None):\n        return [body['x']]\n"
CUSTOM_CODE = "class Preprocess:\n    def process(self, d, s, c=None):\n        return d\n"


@pytest.fixture
def service(service):
    service.plane = DataPlane(metrics=Metrics())
    service.reconciler.plane = service.reconciler.swap.plane = service.plane
    return service


@pytest.fixture
def client(service, tmp_path):
    sk = service.model()
    service.add("sk", "sklearn", model_id=sk, code=service.code(ROW_CODE))
    service.add("sk", "sklearn", version="2", model_id=sk, code=service.code(ROW_CODE))
    service.add("skb", "sklearn", model_id=sk, aux_config={"max_batch_size": 8})
    typed = (TensorSpec(name="features", dtype="float64", shape=(-1, 2)),)
    service.add("sk_named", "sklearn", model_id=sk, inputs=typed, outputs=(TensorSpec(name="label"),))
    onnx_model = service.registry.upload("plus_one", path=plus_one(tmp_path / "plus_one.onnx")).id
    service.add("ox", "onnxruntime", model_id=onnx_model)
    service.add("oxb", "onnxruntime", model_id=onnx_model, aux_config={"max_batch_size": 4})
    service.add("cu", code=service.code(CUSTOM_CODE))
    service.apply()
    app = FerryApp(service.plane, max_body=1 << 20)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ferry")


def tensor(name, data, datatype="FP32"):
    array = np.asarray(data)
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}


async def test_server_metadata_and_health(client):
    r = await client.get("/v2")
    assert r.status_code == 200
    assert r.json() == {"name": "ferry", "version": __version__, "extensions": ["binary_tensor_data"]}
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}


async def test_model_metadata_names_row_tensors_like_triton(client):
    r = await client.get("/v2/models/sk")
    assert r.status_code == 200
    assert r.json() == {
        "name": "sk",
        "versions": ["2"],
        "platform": "sklearn",
        "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": "output__0", "datatype": "INT64", "shape": [-1]}],
    }
    named = (await client.get("/v2/models/sk_named")).json()
    assert named["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 2]}]
    assert named["outputs"][0]["name"] == "label"


async def test_onnx_metadata_comes_from_the_model(client):
    r = await client.get("/v2/models/ox/versions/")
    assert r.status_code == 404  # an empty version is no route
    meta = (await client.get("/v2/models/ox")).json()
    assert meta["platform"] == "onnxruntime"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]


async def test_model_ready_and_versions(client):
    assert (await client.get("/v2/models/sk/ready")).json() == {"name": "sk", "ready": True}
    assert (await client.get("/v2/models/sk/versions/2/ready")).status_code == 200
    r = await client.get("/v2/models/sk/versions/9/ready")
    assert r.status_code == 404 and "no endpoint 'sk/9'" in r.json()["error"]
    assert (await client.get("/v2/models/sk/versions/2")).json()["versions"] == ["2"]


@pytest.mark.parametrize("endpoint", ["sk", "skb"])
async def test_sklearn_infer_json_answers_what_serve_answers(client, endpoint):
    rows = [[1.0, 2.0], [-1.0, -2.0], [0.5, 0.1]]
    r = await client.post(f"/v2/models/{endpoint}/infer", json={"id": "r1", "inputs": [tensor("input__0", rows)]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == endpoint and body["id"] == "r1"
    assert body["outputs"] == [{"name": "output__0", "datatype": "INT64", "shape": [3], "data": [1, 0, 1]}]
    served = [(await client.post("/serve/sk", json={"x": row})).json() for row in rows]
    assert served == [[1], [0], [1]]


async def test_nested_data_and_a_typed_input(client):
    body = {"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP64", "data": [[3, 3], [-3, -3]]}]}
    r = await client.post("/v2/models/sk_named/infer", json=body)
    assert r.json()["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}


@pytest.mark.parametrize("endpoint", ["ox", "oxb"])
async def test_onnx_binary_inputs_and_outputs_through_tritonclient_codec(client, endpoint):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    given = tritonhttp.InferInput("x", [2, 3], "FP32")
    given.set_data_from_numpy(x, binary_data=True)
    wanted = tritonhttp.InferRequestedOutput("y", binary_data=True)
    body, json_size = tritonhttp.InferenceServerClient.generate_request_body([given], [wanted])
    headers = {"Inference-Header-Content-Length": str(json_size), "Content-Type": "application/octet-stream"}
    r = await client.post(f"/v2/models/{endpoint}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    result = tritonhttp.InferenceServerClient.parse_response_body(r.content, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    assert result.get_output("y")["parameters"] == {"binary_data_size": 24}


async def test_binary_data_output_for_every_output_and_json_input(client):
    body = {"inputs": [tensor("x", [[1, 2, 3]])], "parameters": {"binary_data_output": True}}
    r = await client.post("/v2/models/ox/infer", json=body)
    length = int(r.headers["inference-header-content-length"])
    assert np.frombuffer(r.content[length:], "<f4").tolist() == [2.0, 3.0, 4.0]
    body["outputs"] = [{"name": "y", "parameters": {"binary_data": False}}]
    assert (await client.post("/v2/models/ox/infer", json=body)).json()["outputs"][0]["data"] == [2.0, 3.0, 4.0]


async def test_unknown_model_is_404(client):
    r = await client.post("/v2/models/nope/infer", json={"inputs": [tensor("x", [[1, 2, 3]])]})
    assert r.status_code == 404
    assert "no endpoint 'nope'" in r.json()["error"]
    assert (await client.get("/v2/models/nope")).status_code == 404
    assert (await client.get("/v2/models/nope/ready")).status_code == 404


@pytest.mark.parametrize(
    ("endpoint", "inputs", "outputs", "text"),
    [
        ("ox", [tensor("x", [[1, 2]])], None, "input x takes shape [-1, 3] (-1: any size), got [1, 2]"),
        ("ox", [tensor("x", [1, 2, 3])], None, "input x takes shape [-1, 3]"),
        ("ox", [tensor("x", [[1, 2, 3]], "FP64")], None, "input x takes datatype FP32, got FP64"),
        ("ox", [tensor("x", [[1, 2, 3]], "INT32")], None, "takes datatype FP32, got INT32"),
        ("ox", [tensor("z", [[1, 2, 3]])], None, "has no input 'z': its inputs are ['x']"),
        ("ox", [tensor("x", [[1, 2, 3]])], [{"name": "w"}], "has no output 'w': its outputs are ['y']"),
        ("sk", [tensor("input__0", [1.0, 2.0])], None, "input input__0 takes shape [-1, -1]"),
        ("sk", [{"name": "input__0", "shape": [1], "datatype": "BYTES", "data": ["a"]}], None, "takes numbers"),
        ("sk_named", [tensor("features", [[1, 2]], "FP32")], None, "takes datatype FP64, got FP32"),
        ("sk_named", [tensor("features", [[1, 2, 3]], "FP64")], None, "takes shape [-1, 2]"),
        ("oxb", [tensor("x", np.zeros((5, 3)))], None, "takes at most 4 rows a request (aux config max_batch_size)"),
        ("skb", [tensor("input__0", np.zeros((9, 2)))], None, "takes at most 8 rows a request"),
    ],
)
async def test_wrong_inputs_are_422_and_say_what_the_model_takes(client, endpoint, inputs, outputs, text):
    body = {"inputs": inputs, **({"outputs": outputs} if outputs else {})}
    r = await client.post(f"/v2/models/{endpoint}/infer", json=body)
    assert r.status_code == 422, r.text
    assert text in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"{", "not valid JSON"),
        (b'{"inputs": []}', 'needs "inputs"'),
        (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP99", "data": [1, 2, 3]}]}', "FP99"),
        (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]}', "holds 3 values"),
        (b'{"inputs": [{"name": "x", "shape": [1, -3], "datatype": "FP32", "data": [1]}]}', "shape must be"),
        (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, "a", 3]}]}', "must be numbers"),
        (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32"}]}', 'give "data"'),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}', "does not fit INT8"),
    ],
)
async def test_malformed_requests_are_400(client, body, text):
    r = await client.post("/v2/models/ox/infer", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert text in r.json()["error"]


async def test_binary_sizes_that_do_not_add_up_are_400(client):
    head = b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}'
    for tail, text in ((b"\x00" * 8, "runs past"), (b"\x00" * 16, "belong to no input")):
        headers = {"Inference-Header-Content-Length": str(len(head))}
        r = await client.post("/v2/models/ox/infer", content=head + tail, headers=headers)
        assert r.status_code == 400 and text in r.json()["error"]
    r = await client.post("/v2/models/ox/infer", content=head, headers={"Inference-Header-Content-Length": "9999"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


async def test_custom_engines_point_to_serve(client):
    r = await client.post("/v2/models/cu/infer", json={"inputs": [tensor("x", [1])]})
    assert r.status_code == 400
    assert "POST /serve/cu instead" in r.json()["error"]
    assert (await client.get("/v2/models/cu")).status_code == 400


async def test_methods_and_unknown_routes(client):
    assert (await client.get("/v2/models/ox/infer")).status_code == 405
    assert (await client.post("/v2/models/ox")).status_code == 405
    assert (await client.get("/v2/nothing")).status_code == 404
    assert (await client.get("/v2/models/ox/versions/1/2/ready")).status_code == 404


async def test_v2_requests_count_in_the_endpoint_metrics(client, service):
    await client.post("/v2/models/ox/infer", json={"inputs": [tensor("x", [[1, 2, 3]])]})
    await client.post("/v2/models/ox/infer", json={"inputs": [tensor("x", [[1, 2]])]})
    service.plane.refresh_metrics()
    text = (await client.get("/metrics")).text
    assert 'ferry_requests_total{code="200",endpoint="ox",version=""} 1.0' in text
    assert 'ferry_requests_total{code="422",endpoint="ox",version=""} 1.0' in text


async def test_bytes_tensors_round_trip_as_length_prefixed_binary(client):
    from ferry.rest.v2 import _from_binary, _to_binary

    values = np.array([b"ab", b"", "\u00e9".encode()], dtype=object)
    raw = _to_binary(values, "BYTES")
    assert raw[:6] == struct.pack("<I", 2) + b"ab"
    assert _from_binary("s", "BYTES", [3], raw).tolist() == values.tolist()


async def test_tokens_lock_v2_but_not_its_health(service):
    service.apply()
    app = FerryApp(service.plane, tokens=["s3cret"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ferry") as locked:
        assert (await locked.get("/v2/health/live")).status_code == 200
        assert (await locked.get("/v2/health/ready")).status_code == 200
        assert (await locked.get("/v2")).status_code == 401
        assert (await locked.get("/v2", headers={"Authorization": "Bearer s3cret"})).status_code == 200


async def test_openapi_documents_the_v2_routes_for_schemathesis(client):
    import schemathesis
    from schemathesis.core.result import Ok

    document = (await client.get("/openapi.json")).json()
    v2_paths = {p for p in document["paths"] if p.startswith("/v2")}
    assert "/v2/models/{model_name}/versions/{model_version}/infer" in v2_paths and len(v2_paths) == 9
    infer = document["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert [p["name"] for p in infer["parameters"]] == ["model_name", "Inference-Header-Content-Length"]
    assert "sk" in infer["parameters"][0]["schema"]["examples"]
    operations = list(schemathesis.openapi.from_dict(document).get_all_operations())
    assert [str(r.err()) for r in operations if not isinstance(r, Ok)] == []
