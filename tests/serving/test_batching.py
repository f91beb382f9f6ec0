"""Dynamic batching through the data plane with real engines: gather, pad, run once, scatter, errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ferry.control.spec import TensorSpec
from ferry.errors import InvalidInput, UserCodeError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def ragged_model(path: Path) -> Path:
    """y = 2 * x keeps the padded axis; total = sum over axis 1 does not."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])
    total = helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "ragged", [x], [y, total], initializer=[two, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


@pytest.fixture
def ragged(service, tmp_path):
    mid = service.registry.upload("ragged", path=ragged_model(tmp_path / "ragged.onnx")).id
    code = service.code(
        """
        import numpy as np
        class Preprocess:
            def preprocess(self, body, state, collect=None):
                return {"x": np.asarray([body["values"]], dtype=np.float32)}
            def postprocess(self, data, state, collect=None):
                y, total = data
                return {"y": y[0].tolist(), "total": float(total[0])}
        """
    )

    def add(name: str, **aux):
        service.add(
            name,
            "onnxruntime",
            code=code,
            model_id=mid,
            inputs=(TensorSpec(name="x", dtype="float32", shape=(-1, -1)),),
            outputs=(TensorSpec(name="y", shape=(-1, -1)), TensorSpec(name="total", shape=(-1,))),
            aux_config=aux,
        )

    return add


def run_many(service, endpoint: str, bodies: list) -> list:
    async def go():
        service.plane.loop = asyncio.get_running_loop()
        jobs = [service.plane.infer(endpoint, None, b) for b in bodies]
        return await asyncio.gather(*jobs, return_exceptions=True)

    return asyncio.run(go())


def test_ragged_requests_are_padded_batched_and_sliced_back(service, ragged):
    ragged("r", max_batch_size=8, max_queue_delay_ms=50)
    service.apply()
    bodies = [{"values": list(range(1, n + 1))} for n in (1, 3, 2, 5, 4)]
    answers = run_many(service, "r", bodies)
    for body, answer in zip(bodies, answers, strict=True):
        assert answer == {"y": [2.0 * v for v in body["values"]], "total": float(sum(body["values"]))}
    batcher = service.plane.table.resolve("r").batcher
    assert batcher.batched_rows == 5 and batcher.batches < 5  # gathered, not one call each


def test_batching_off_keeps_the_per_request_path(service, ragged):
    ragged("plain")
    service.apply()
    assert service.plane.table.resolve("plain").batcher is None
    assert run_many(service, "plain", [{"values": [1, 2]}]) == [{"y": [2.0, 4.0], "total": 3.0}]


def test_a_lone_request_waits_at_most_the_delay(service, ragged):
    ragged("slow", max_batch_size=32, max_queue_delay_ms=300)
    service.apply()
    run_many(service, "slow", [{"values": [1]}])  # warm the session
    started = time.monotonic()
    assert run_many(service, "slow", [{"values": [1, 2]}])[0]["total"] == 3.0
    assert time.monotonic() - started < 3.0  # the delay is 0.3 s; it never waits for a full batch


def test_a_bad_request_fails_alone(service):
    service.add(
        "sk",
        "sklearn",
        model_id=service.model(),
        code=service.code(
            """
            class Preprocess:
                def preprocess(self, body, state, collect=None):
                    return [body]
                def postprocess(self, data, state, collect=None):
                    return data.tolist()
            """
        ),
        aux_config={"max_batch_size": 16, "max_queue_delay_ms": 50},
    )
    service.apply()
    answers = run_many(service, "sk", [[3.0, 2.0], [1.0, 2.0, 3.0], [-3.0, -2.0]])
    assert answers[0] == [1] and answers[2] == [0]
    assert isinstance(answers[1], UserCodeError) and "rejected its input" in str(answers[1])


def test_preprocess_that_cannot_be_batched_names_the_fix(service):
    service.add(
        "d",
        "sklearn",
        model_id=service.model(),
        code=service.code("class Preprocess:\n    def preprocess(self, b, s, c=None):\n        return {'a': 1}\n"),
        aux_config={"max_batch_size": 4},
    )
    service.apply()
    (answer,) = run_many(service, "d", [{}])
    assert isinstance(answer, UserCodeError) and "must return rows" in str(answer)


def test_engine_that_cannot_batch_is_refused_at_add_with_the_fix(service):
    code = service.code("class Preprocess:\n    def process(self, d, s, c=None):\n        return d\n")
    with pytest.raises(InvalidInput, match="the custom engine does not batch"):
        service.add("c", code=code, aux_config={"max_batch_size": 8})


def test_preferred_sizes_and_triton_style_keys(service, ragged):
    ragged(
        "t", max_batch_size=8, dynamic_batching={"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": 50000}
    )
    service.apply()
    batcher = service.plane.table.resolve("t").batcher
    assert batcher.policy.preferred_sizes == (2, 4) and batcher.policy.max_queue_delay_s == pytest.approx(0.05)
    answers = run_many(service, "t", [{"values": [i]} for i in range(1, 8)])
    assert [a["total"] for a in answers] == [float(i) for i in range(1, 8)]
    assert batcher.batches >= 2
