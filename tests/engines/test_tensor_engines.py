"""The onnxruntime and torchscript engines on tiny real models, through load_engine."""

from __future__ import annotations

import numpy as np
import pytest

from ferry.control.spec import EndpointSpec, TensorSpec
from ferry.engines import load_engine
from ferry.engines.tensor import TensorEngine
from ferry.errors import EngineError, InputMismatch

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

NO_CODE = None  # no user code: no process hook
SPEC_ORDER = ("input_ids", "token_type_ids", "attention_mask")
"""ClearML's huggingface example order: not the model's, so the engines must map by name."""


def spec(engine: str, inputs=(), outputs=(), **aux) -> EndpointSpec:
    return EndpointSpec(
        name="e",
        version="1",
        engine=engine,
        model_id="m1",
        inputs=tuple(TensorSpec(**t) if isinstance(t, dict) else TensorSpec(name=t) for t in inputs),
        outputs=tuple(TensorSpec(name=name) for name in outputs),
        aux_config=aux,
    )


def int64_inputs(names) -> list[dict]:
    return [{"name": name, "dtype": "int64", "shape": (-1, -1)} for name in names]


def x_rows() -> np.ndarray:
    return np.arange(6, dtype=np.float32).reshape(2, 3)


# onnxruntime


def test_onnx_bert_matches_pytorch_by_list_and_by_dict(bert_onnx, bert_batch, bert_logits):
    engine = load_engine(spec("onnxruntime", int64_inputs(SPEC_ORDER)), bert_onnx, None, NO_CODE)
    assert isinstance(engine, TensorEngine) and not engine.is_async
    assert engine.input_names == SPEC_ORDER
    as_list = engine.run([bert_batch[n].tolist() for n in SPEC_ORDER], {}, None)
    as_dict = engine.run({n: bert_batch[n].tolist() for n in SPEC_ORDER}, {}, None)
    for logits in (as_list, as_dict):
        assert isinstance(logits, np.ndarray) and logits.shape == (2, 2)
        np.testing.assert_allclose(logits, bert_logits, atol=1e-4)
    ids, mask, types = (bert_batch[n] for n in ("input_ids", "attention_mask", "token_type_ids"))
    swapped = {"input_ids": ids, "token_type_ids": mask, "attention_mask": types}
    assert not np.allclose(engine.run(swapped, {}, None), bert_logits, atol=1e-3)  # the check can see a swap


def test_onnx_spec_without_inputs_takes_the_models_names_and_dtypes(bert_onnx, bert_batch, bert_logits):
    engine = load_engine(spec("onnxruntime"), bert_onnx, None, NO_CODE)
    assert engine.input_names == ("input_ids", "attention_mask", "token_type_ids")
    logits = engine.run({n: v.tolist() for n, v in bert_batch.items()}, {}, None)
    np.testing.assert_allclose(logits, bert_logits, atol=1e-4)


def test_onnx_several_outputs_come_back_in_output_order(two_output_onnx):
    engine = load_engine(spec("onnxruntime"), two_output_onnx, None, NO_CODE)
    y1, y2 = engine.run(x_rows().tolist(), {}, None)
    np.testing.assert_array_equal(y1, x_rows() + 1)
    np.testing.assert_array_equal(y2, x_rows() * 2)


def test_onnx_spec_outputs_select_and_order(two_output_onnx):
    one = load_engine(spec("onnxruntime", outputs=["y2"]), two_output_onnx, None, NO_CODE)
    assert isinstance(one.run(x_rows(), {}, None), np.ndarray)
    np.testing.assert_array_equal(one.run(x_rows(), {}, None), x_rows() * 2)
    both = load_engine(spec("onnxruntime", outputs=["y2", "y1"]), two_output_onnx, None, NO_CODE)
    assert [o.tolist() for o in both.run(x_rows(), {}, None)] == [(x_rows() * 2).tolist(), (x_rows() + 1).tolist()]


def test_onnx_stacked_feeds_give_each_request_its_rows(two_output_onnx):
    engine = load_engine(spec("onnxruntime", [{"name": "x", "shape": (-1, 3)}]), two_output_onnx, None, NO_CODE)
    feeds = [engine.prepare([1.0, 2.0, 3.0]), engine.prepare([[4.0, 5.0, 6.0]])]
    assert feeds[0]["x"].shape == (1, 3) and feeds[0]["x"].dtype == np.float32
    y1, y2 = engine.run_tensors({"x": np.concatenate([f["x"] for f in feeds])})
    assert y1.tolist() == [[2, 3, 4], [5, 6, 7]] and y2[1].tolist() == [8, 10, 12]


def test_onnx_session_defaults(two_output_onnx):
    engine = load_engine(spec("onnxruntime"), two_output_onnx, None, NO_CODE)
    options = engine.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.log_severity_level == 3
    assert engine.session.get_providers()[-1] == "CPUExecutionProvider"


def test_onnx_aux_config_reaches_the_session(two_output_onnx):
    aux = {"intra_op_num_threads": 2, "inter_op_num_threads": 2, "graph_optimization_level": "basic"}
    aux["providers"] = "CPUExecutionProvider"
    engine = load_engine(spec("onnxruntime", **aux), two_output_onnx, None, NO_CODE)
    options = engine.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 2)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert engine.session.get_providers() == ["CPUExecutionProvider"]


def test_onnx_unknown_optimization_level(two_output_onnx):
    with pytest.raises(EngineError, match="e/1.*graph_optimization_level='max'.*disable, basic, extended, all"):
        load_engine(spec("onnxruntime", graph_optimization_level="max"), two_output_onnx, None, NO_CODE)


def test_onnx_loaded_session_overrides_the_file(two_output_onnx, tmp_path):
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"not onnx")
    session = ort.InferenceSession(str(two_output_onnx), providers=["CPUExecutionProvider"])
    engine = load_engine(spec("onnxruntime", outputs=["y1"]), corrupt, session, NO_CODE)
    np.testing.assert_array_equal(engine.run(x_rows(), {}, None), x_rows() + 1)


def test_onnx_corrupt_file_names_endpoint_and_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07 truncated protobuf")
    with pytest.raises(EngineError) as info:
        load_engine(spec("onnxruntime"), path, None, NO_CODE)
    assert "e/1" in str(info.value) and str(path) in str(info.value)


def test_onnx_unknown_input_name_lists_the_models_inputs(bert_onnx):
    names = ("input_ids", "attention_mask", "segment_ids")
    with pytest.raises(
        EngineError, match=r"no input 'segment_ids'.*\['input_ids', 'attention_mask', 'token_type_ids'\]"
    ):
        load_engine(spec("onnxruntime", int64_inputs(names)), bert_onnx, None, NO_CODE)


def test_onnx_spec_missing_a_model_input(bert_onnx):
    with pytest.raises(EngineError, match=r"also needs inputs \['token_type_ids'\]"):
        load_engine(spec("onnxruntime", int64_inputs(["input_ids", "attention_mask"])), bert_onnx, None, NO_CODE)


def test_onnx_unknown_output_name(two_output_onnx):
    with pytest.raises(EngineError, match=r"no output \['y3'\].*\['y1', 'y2'\]"):
        load_engine(spec("onnxruntime", outputs=["y3"]), two_output_onnx, None, NO_CODE)


def test_onnx_dtype_the_model_rejects_fails_at_load(two_output_onnx):
    with pytest.raises(EngineError, match="float64 in the spec but the model takes float32: set --input-type float32"):
        load_engine(spec("onnxruntime", [{"name": "x", "dtype": "float64"}]), two_output_onnx, None, NO_CODE)


def test_onnx_wrong_number_of_inputs_is_an_input_mismatch(bert_onnx, bert_batch):
    engine = load_engine(spec("onnxruntime", int64_inputs(SPEC_ORDER)), bert_onnx, None, NO_CODE)
    with pytest.raises(InputMismatch, match="must return 3 inputs"):
        engine.run([bert_batch["input_ids"], bert_batch["attention_mask"]], {}, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_ids": np.ones((3, 4, 5), dtype=np.int64)},
         "endpoint e/1: input input_ids expects shape [-1, -1] (int64), got [3, 4, 5]"),
        ({"attention_mask": [["a", "b"]]}, "endpoint e/1: input attention_mask cannot be made int64: invalid literal"),
        ({"token_type_ids": [[10**30, 1]]}, "endpoint e/1: input token_type_ids cannot be made int64"),
        ({"input_ids": [[1, 2], [3]]}, "endpoint e/1: input input_ids cannot be made int64: setting an array element"),
        ({"token_type_ids": None}, "endpoint e/1: input token_type_ids cannot be made int64"),
    ],
)  # fmt: skip
def test_onnx_inputs_are_checked_against_the_spec_before_the_model(bert_onnx, bert_batch, change, message):
    engine = load_engine(spec("onnxruntime", int64_inputs(SPEC_ORDER)), bert_onnx, None, NO_CODE)
    with pytest.raises(InputMismatch) as info:
        engine.run({**bert_batch, **change}, {}, None)
    assert str(info.value).startswith(message) and info.value.status_code == 422


def test_onnx_missing_input_names_it_and_the_keys_received(bert_onnx, bert_batch):
    engine = load_engine(spec("onnxruntime", int64_inputs(SPEC_ORDER)), bert_onnx, None, NO_CODE)
    with pytest.raises(InputMismatch, match=r"input attention_mask is missing: expected inputs .*got \['input_ids'"):
        engine.run({"input_ids": bert_batch["input_ids"], "token_type_ids": bert_batch["token_type_ids"]}, {}, None)


def test_onnx_without_a_spec_shape_checks_the_models_own(two_output_onnx):
    engine = load_engine(spec("onnxruntime"), two_output_onnx, None, NO_CODE)
    assert engine.inputs[0].shape == (-1, 3)
    with pytest.raises(InputMismatch, match=r"input x expects shape \[-1, 3\] \(float32\), got \[1, 2\]"):
        engine.run([[1.0, 2.0]], {}, None)
    y1, _ = engine.run([1.0, 2.0, 3.0], {}, None)  # one row: it gets the batch axis
    assert y1.tolist() == [[2.0, 3.0, 4.0]]


@pytest.mark.parametrize(
    ("ids", "reason"),
    [
        (np.ones((1, 100), dtype=np.int64), "Add node: Attempting to broadcast"),  # over 64 positions: FAIL
        (
            np.array([[2, 500, 3]]),
            "Gather node: indices element out of data bounds",
        ),  # past the vocab: INVALID_ARGUMENT
    ],
)
def test_onnx_inputs_the_model_refuses_are_input_mismatches(bert_onnx, ids, reason):
    engine = load_engine(spec("onnxruntime"), bert_onnx, None, NO_CODE)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with pytest.raises(InputMismatch) as info:
        engine.run(feeds, {}, None)
    assert str(info.value).startswith(f"endpoint e/1: the onnxruntime model rejected its input: {reason}")
    assert info.value.details["stage"] == "model"


# torchscript


def test_torchscript_bert_matches_pytorch(bert_torchscript, bert_batch, bert_logits):
    order = ("input_ids", "attention_mask", "token_type_ids")
    engine = load_engine(spec("torchscript", int64_inputs(order)), bert_torchscript, None, NO_CODE)
    assert isinstance(engine, TensorEngine) and not engine.is_async and engine.device.type == "cpu"
    for data in ([bert_batch[n].tolist() for n in order], {n: bert_batch[n] for n in order}):
        logits = engine.run(data, {}, None)
        assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, bert_logits, atol=1e-4)


def test_torchscript_dict_outputs_follow_the_spec(dict_module, tmp_path):
    path = tmp_path / "pair.pt"
    dict_module.save(str(path))
    by_dict_order = load_engine(spec("torchscript"), path, None, NO_CODE)
    assert by_dict_order.input_names == ("x", "y")
    total, product = by_dict_order.run([[1.5, 2.0], [3.0, 4.0]], {}, None)
    assert total.dtype == np.float32 and total.tolist() == [4.5, 6.0] and product.tolist() == [4.5, 8.0]
    by_spec = load_engine(spec("torchscript", outputs=["product"]), path, None, NO_CODE)
    assert by_spec.run({"x": [2.0], "y": [5.0]}, {}, None).tolist() == [10.0]


def test_torchscript_missing_dict_output(dict_module):
    engine = load_engine(spec("torchscript", outputs=["ratio"]), None, dict_module, NO_CODE)
    with pytest.raises(EngineError, match=r"e/1.*no output \['ratio'\].*\['sum', 'product'\]"):
        engine.run([[1.0], [2.0]], {}, None)


def test_torchscript_loaded_module_overrides_the_file(dict_module, tmp_path):
    corrupt = tmp_path / "model.pt"
    corrupt.write_bytes(b"not torchscript")
    engine = load_engine(spec("torchscript"), corrupt, dict_module, NO_CODE)
    assert [o.tolist() for o in engine.run([[1.0], [3.0]], {}, None)] == [[4.0], [3.0]]


def test_torchscript_threads_change_only_when_needed(dict_module, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    load_engine(spec("torchscript"), None, dict_module, NO_CODE)
    load_engine(spec("torchscript", intra_op_num_threads=3), None, dict_module, NO_CODE)
    assert calls == [3]


def test_torchscript_corrupt_file_names_endpoint_and_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(EngineError) as info:
        load_engine(spec("torchscript"), path, None, NO_CODE)
    assert "e/1" in str(info.value) and str(path) in str(info.value)


def test_torchscript_wrong_number_of_inputs_is_an_input_mismatch(bert_torchscript):
    engine = load_engine(spec("torchscript"), bert_torchscript, None, NO_CODE)
    assert engine.input_names == ("input_ids", "attention_mask", "token_type_ids")
    with pytest.raises(InputMismatch, match="must return 3 inputs"):
        engine.run([[1, 2, 3]] * 2, {}, None)


def test_torchscript_shape_errors_are_input_mismatches_without_the_traceback(bert_torchscript):
    engine = load_engine(spec("torchscript"), bert_torchscript, None, NO_CODE)
    ids = np.ones((1, 100), dtype=np.int64)  # over the model's 64 positions
    with pytest.raises(InputMismatch) as info:
        engine.run([ids, np.ones_like(ids), np.zeros_like(ids)], {}, None)
    message = str(info.value)
    assert message.startswith("endpoint e/1: the torchscript model rejected its input: The size of tensor a (100)")
    assert "Traceback" not in message and "/" not in message.removeprefix("endpoint e/1")


def test_torchscript_untyped_input_takes_only_numbers(dict_module):
    engine = load_engine(spec("torchscript"), None, dict_module, NO_CODE)
    with pytest.raises(InputMismatch, match=r"endpoint e/1: input x expects numbers, got <U1 values"):
        engine.run({"x": ["a"], "y": [1.0]}, {}, None)


def test_torchscript_declared_shape_is_checked(dict_module):
    engine = load_engine(spec("torchscript", [{"name": "x", "shape": (-1, 2)}, "y"]), None, dict_module, NO_CODE)
    assert engine.run({"x": [1.0, 2.0], "y": [[3.0, 4.0]]}, {}, None)[0].tolist() == [[4.0, 6.0]]
    with pytest.raises(InputMismatch, match=r"input x expects shape \[-1, 2\], got \[1, 3\]"):
        engine.run({"x": [[1.0, 2.0, 3.0]], "y": [[3.0, 4.0]]}, {}, None)
