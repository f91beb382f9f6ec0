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
    ragged("plain", max_batch_size=1)
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


SKLEARN_ROWS = """
class Preprocess:
    def preprocess(self, body, state, collect=None):
        return body["rows"]
    def postprocess(self, data, state, collect=None):
        return data.tolist()
"""


def test_a_newcomers_sklearn_endpoint_batches_by_default_and_answers_as_alone(service):
    """No aux config: the batcher is on (32, no delay); concurrent requests share model calls, each answer equal
    to the model's own answer for its rows; a request of more rows than the cap runs alone instead of failing."""
    service.add("sk", "sklearn", model_id=service.model(), code=service.code(SKLEARN_ROWS))
    service.apply()
    batcher = service.plane.table.resolve("sk").batcher
    assert batcher is not None and (batcher.policy.max_batch_size, batcher.policy.implicit) == (32, True)
    assert batcher.policy.max_queue_delay_s == 0
    bodies = [{"rows": [[float(i), float(i % 3) - 1]]} for i in range(-20, 20)] + [{"rows": [[1.0, 2.0]] * 40}]
    answers = run_many(service, "sk", bodies)
    model = batcher.engine.model
    for body, answer in zip(bodies, answers, strict=True):
        assert answer == model.predict(body["rows"]).tolist()
    assert batcher.batches < len(bodies) - 1 and batcher.batched_rows == len(bodies) - 1  # the 40 rows ran alone


def test_by_default_what_does_not_stack_runs_alone_instead_of_failing(service):
    """A table from preprocess (a DataFrame: a thing with ``columns``, which sklearn reads through ``__array__``) is
    not rows the batcher stacks: with batching on by default it runs alone, as it did unbatched; asked for
    (max_batch_size=4), it names the fix. (pandas is not a test dependency: a minimal table stands in.)"""
    code = service.code(
        """
        import numpy as np
        class Table:
            columns = ("x0", "x1")
            def __init__(self, rows):
                self.rows = rows
            def __array__(self, dtype=None, copy=None):
                return np.asarray(self.rows, dtype=dtype)
        class Preprocess:
            def preprocess(self, body, state, collect=None):
                return Table(body["rows"])
            def postprocess(self, data, state, collect=None):
                return data.tolist()
        """
    )
    service.add("frame", "sklearn", model_id=service.model(), code=code)
    service.add("asked", "sklearn", model_id=service.model(), code=code, aux_config={"max_batch_size": 4})
    service.apply()
    model = service.plane.table.resolve("frame").batcher.engine.model
    bodies = [{"rows": [[1.0, 2.0], [-3.0, -2.0]]}, {"rows": [[0.5, -4.0]]}]
    assert run_many(service, "frame", bodies) == [model.predict(b["rows"]).tolist() for b in bodies]
    (refused,) = run_many(service, "asked", bodies[:1])
    assert isinstance(refused, UserCodeError) and "must return rows" in str(refused)


def fixed_batch_model(path: Path) -> Path:
    """y = x + 1 on exactly one row: input [1, 2], so two stacked requests are refused by ONNX Runtime."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "fixed", [x], [y], initializer=[one])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_by_default_a_model_that_refuses_a_batch_is_run_one_request_at_a_time(service, tmp_path, caplog):
    mid = service.registry.upload("fixed", path=fixed_batch_model(tmp_path / "fixed.onnx")).id
    code = service.code(
        """
        import numpy as np
        class Preprocess:
            def preprocess(self, body, state, collect=None):
                return {"x": np.asarray([body], dtype=np.float32)}
            def postprocess(self, data, state, collect=None):
                return data[0].tolist()
        """
    )
    service.add("fixed", "onnxruntime", model_id=mid, code=code)
    service.apply()
    batcher = service.plane.table.resolve("fixed").batcher
    for _ in range(3):  # until some round was gathered into one batch (its first attempt fails, then alone)
        bodies = [[float(i), float(-i)] for i in range(8)]
        assert run_many(service, "fixed", bodies) == [[v + 1 for v in body] for body in bodies]
        if batcher.solo:
            break
    assert batcher.solo and "runs them one at a time" in caplog.text
    calls = batcher.batches
    assert run_many(service, "fixed", [[1.0, 2.0], [3.0, 4.0]]) == [[2.0, 3.0], [4.0, 5.0]]
    assert batcher.batches == calls  # no more batch attempts
