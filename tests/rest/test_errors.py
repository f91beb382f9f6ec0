"""What a client sees when something goes wrong: its own faults as 4xx that say why, ferry's as a 5xx with an id."""

from __future__ import annotations

import gzip
import logging

import httpx
import pytest

from ferry.control.spec import TensorSpec
from ferry.errors import strip_paths
from ferry.rest.app import FerryApp

pytestmark = pytest.mark.anyio
onnx = pytest.importorskip("onnx")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


BROKEN_MODEL = """
    class Broken:
        def predict(self, rows):
            raise RuntimeError("cannot mmap /srv/ferry/cache/ab/cd/weights.bin")
    class Preprocess:
        def load(self, path):
            return Broken()
"""


def plus_one(path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "plus_one", [x], [y], initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def client(service, tmp_path):
    echo = service.code("class Preprocess:\n    def process(self, d, s, c=None):\n        return d\n")
    service.add("echo", code=echo)
    service.add("broken", "sklearn", model_id=service.model(), code=service.code(BROKEN_MODEL))
    service.add("bad_import", code=service.code("import no_such_module_here\n"))
    model = service.registry.upload("plus_one", path=plus_one(tmp_path / "plus_one.onnx")).id
    x = (TensorSpec(name="x", dtype="float32", shape=(-1, 3)),)
    service.add("onnx", "onnxruntime", model_id=model, inputs=x)
    service.add("onnx_batched", "onnxruntime", model_id=model, inputs=x, aux_config={"max_batch_size": 4})
    service.apply()
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=FerryApp(service.plane)), base_url="http://ferry")


GZIPPED = {"Content-Type": "application/json", "Content-Encoding": "gzip"}


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (gzip.compress(b'{"z": [1, 2, 3]}', mtime=0)[:-6], "the stream is truncated"),
        (gzip.compress(b'{"z": [1, 2, 3]}', mtime=0)[:12], "the stream is truncated"),
        (gzip.compress(b'{"z": 1}', mtime=0) + b"junk!", "not valid gzip"),
        (b"\x1f\x8b" + b"\x00" * 20, "not valid gzip"),
    ],
)
async def test_corrupt_or_truncated_gzip_is_400(client, body, text):
    r = await client.post("/serve/echo", content=body, headers=GZIPPED)
    assert r.status_code == 400 and text in r.json()["error"] and r.json()["kind"] == "InvalidInput"


async def test_gzip_of_several_members_is_one_body(client):
    body = gzip.compress(b'{"z": [1,') + gzip.compress(b" 2]}")
    r = await client.post("/serve/echo", content=body, headers=GZIPPED)
    assert r.status_code == 200 and r.json() == {"z": [1, 2]}


@pytest.mark.parametrize("endpoint", ["onnx", "onnx_batched"])
@pytest.mark.parametrize(
    ("body", "text"),
    [
        ([[1, 2]], "endpoint {e}: input x expects shape [-1, 3] (float32), got [1, 2]"),
        ([[[1, 2, 3]]], "endpoint {e}: input x expects shape [-1, 3] (float32), got [1, 1, 3]"),
        ([["a", "b", "c"]], "endpoint {e}: input x cannot be made float32: could not convert string to float"),
        ({"y": [1, 2, 3]}, "endpoint {e}: input x is missing: expected inputs ['x'], got ['y']"),
    ],
)
async def test_input_that_does_not_fit_the_spec_is_422_naming_the_input(client, endpoint, body, text):
    r = await client.post(f"/serve/{endpoint}", json=body)
    assert r.status_code == 422
    assert r.json()["error"].startswith(text.format(e=endpoint))
    assert r.json()["kind"] == "InputMismatch"
    good = await client.post(f"/serve/{endpoint}", json=[1, 2, 3])
    assert good.status_code == 200 and good.json() == [[2.0, 3.0, 4.0]]


async def test_ferry_failure_is_500_with_an_id_and_the_details_only_in_the_log(client, caplog):
    with caplog.at_level(logging.ERROR, logger="ferry.rest.http"):
        r = await client.post("/serve/broken", json={})
    answer = r.json()
    assert r.status_code == 500 and answer["kind"] == "EngineError" and answer["stage"] == "model"
    assert answer["id"] in answer["error"] and "server log" in answer["error"]
    assert "mmap" not in r.text and "/srv" not in r.text and "Traceback" not in r.text
    (record,) = [rec for rec in caplog.records if answer["id"] in rec.getMessage()]
    assert "cannot mmap /srv/ferry/cache/ab/cd/weights.bin" in record.getMessage()
    assert record.exc_info is not None  # the traceback goes to the log


async def test_no_answer_names_a_local_directory(client, service):
    r = await client.post("/serve/bad_import", json={})
    assert r.status_code == 503 and "preprocess.py failed to import" in r.json()["error"]
    assert str(service.root) not in r.text and "/preprocess.py" not in r.text


def test_strip_paths_keeps_file_names_and_what_is_not_a_local_path():
    text = "/tmp/x/code1/preprocess.py at file:///usr/a/b.onnx; use /serve/<endpoint>/<version> not /serve/a/b/c"
    assert strip_paths(text) == "preprocess.py at b.onnx; use /serve/<endpoint>/<version> not /serve/a/b/c"
    kept = "endpoint e/1 got 1/2 of s3://bucket/key/x at node '/bert/embeddings/Add_1'"
    assert strip_paths(kept) == kept
