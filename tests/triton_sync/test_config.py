"""config.pbtxt and the model file name that `ferry triton sync` writes, read back with ferry's own parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.control.aux_config import validate_aux_config
from ferry.control.pbtxt import parse_pbtxt, to_pbtxt
from ferry.control.spec import EndpointSpec, TensorSpec
from ferry.control.triton_config import MAPS, REPEATED
from ferry.errors import InvalidInput
from ferry.triton.repository import ENUMS, TRITON_TYPES, model_files, triton_config


def endpoint(aux: dict, inputs=(("x", "float32", (-1, 4)),), outputs=(("y", "float32", (-1, 3)),)) -> EndpointSpec:
    return EndpointSpec(
        name="clf",
        version="2",
        engine="triton",
        model_id="m1",
        inputs=tuple(TensorSpec(name=n, dtype=d, shape=s) for n, d, s in inputs),
        outputs=tuple(TensorSpec(name=n, dtype=d, shape=s) for n, d, s in outputs),
        aux_config=validate_aux_config("triton", aux),
    )


def model_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(b"model bytes")
    return path


def written(spec: EndpointSpec, artifact: Path) -> tuple[dict, str]:
    files = model_files(spec, "clf_2", artifact, "0" * 64)
    return parse_pbtxt(files.config, repeated=REPEATED, maps=MAPS), files.filename


def test_generated_fields_and_aux_merge(tmp_path: Path):
    aux = {
        "max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_microseconds": 100, "preferred_batch_size": [4, 8]},
        "instance_group": {"count": 2, "kind": "KIND_CPU"},
        "parameters": {"threads": "1"},
        "request_timeout_ms": 50,  # ferry's own keys: never in config.pbtxt
        "max_queue_size": 10,
        "triton_grpc_server": "triton:8001",
        "warmup": {"x": [1, 2, 3, 4]},
    }
    config, filename = written(endpoint(aux), model_file(tmp_path, "classifier.onnx"))
    assert filename == "model.onnx"
    assert config == {
        "name": "clf_2",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 8,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],  # the batch axis is Triton's own
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 100, "preferred_batch_size": [4, 8]},
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
        "parameters": {"threads": {"string_value": "1"}},
    }


def test_without_batching_dims_are_the_whole_shape_and_every_dtype_maps(tmp_path: Path):
    dtypes = sorted(TRITON_TYPES)
    inputs = [(f"in_{d}", d, (-1, 2)) for d in dtypes]
    spec = endpoint({}, inputs=inputs, outputs=[("s", "int64", ())])
    config, _ = written(spec, model_file(tmp_path, "m.pt"))
    assert config["platform"] == "pytorch_libtorch" and config["max_batch_size"] == 0
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        (f"in_{d}", TRITON_TYPES[d], [-1, 2]) for d in dtypes
    ]
    assert {"TYPE_STRING", "TYPE_BOOL", "TYPE_UINT8", "TYPE_FP16", "TYPE_FP64"} <= set(TRITON_TYPES.values())
    assert config["output"] == [{"name": "s", "data_type": "TYPE_INT64", "dims": [1], "reshape": {}}]  # a scalar


def test_a_fixed_leading_axis_stays_with_batching(tmp_path: Path):
    """ClearML's `--input-size 1 28 28` is Triton's dims as written; only ferry's -1 batch axis goes."""
    spec = endpoint({"max_batch_size": 4}, inputs=[("img", "float32", (1, 28, 28))])
    config, _ = written(spec, model_file(tmp_path, "m.onnx"))
    assert config["input"][0]["dims"] == [1, 28, 28]


def test_default_model_filename_and_platform_from_aux(tmp_path: Path):
    """ClearML's huggingface example: a TensorRT plan shipped as model.bin."""
    spec = endpoint({"platform": "tensorrt_plan", "default_model_filename": "model.bin"})
    config, filename = written(spec, model_file(tmp_path, "exported.bin"))
    assert filename == "model.bin"
    assert config["platform"] == "tensorrt_plan" and config["default_model_filename"] == "model.bin"
    assert "backend" not in config


def test_aux_may_replace_generated_fields_but_not_the_name(tmp_path: Path):
    tensor = {"name": "IN", "data_type": "TYPE_STRING", "dims": [1]}
    spec = endpoint({"name": "other", "backend": "python", "input": [tensor], "max_batch_size": 2})
    config, filename = written(spec, model_file(tmp_path, "model.py"))
    assert config["name"] == "clf_2" and filename == "model.py"
    assert config["backend"] == "python" and "platform" not in config
    assert config["input"] == [tensor]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}]


def test_folder_artifacts_pick_their_backend(tmp_path: Path):
    python = tmp_path / "pymodel"
    python.mkdir()
    (python / "model.py").write_text("")
    saved = tmp_path / "export"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    assert triton_config(endpoint({}), "a", python)[0]["backend"] == "python"
    config, filename = triton_config(endpoint({}), "a", saved)
    assert (config["platform"], filename) == ("tensorflow_savedmodel", "model.savedmodel")


def test_unknown_backend_keeps_the_file_name_and_tells_triton(tmp_path: Path):
    config, filename = triton_config(endpoint({"backend": "openvino"}), "a", model_file(tmp_path, "net.xml"))
    assert filename == "net.xml" and config["default_model_filename"] == "net.xml"


def test_errors_name_the_fix(tmp_path: Path):
    with pytest.raises(InvalidInput, match="add platform=... or backend=..."):
        triton_config(endpoint({}), "a", model_file(tmp_path, "weights.bin"))
    spec = endpoint({}, inputs=[("x", None, (-1, 4))])
    with pytest.raises(InvalidInput, match="endpoint clf/2: input 0 has no type: give --input-type"):
        triton_config(spec, "a", model_file(tmp_path, "m.onnx"))


def test_to_pbtxt_quotes_strings_escapes_and_writes_enums_bare():
    config = {
        "name": 'a "quoted"\\name\n',
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
        "parameters": {"k": {"string_value": "v"}},
        "dynamic_batching": {"priority_queue_policy": {1: {"timeout_action": "DELAY"}}},
        "optimization": {"input_pinned_memory": {"enable": False}},
        "version_policy": {"specific": {"versions": [1, 3]}},
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [-1]}],
        "backend": None,
    }
    text = to_pbtxt(config, maps=MAPS, enums=ENUMS)
    assert "kind: KIND_CPU" in text and "data_type: TYPE_FP32" in text and "timeout_action: DELAY" in text
    assert "key: 1\n" in text and 'key: "k"' in text and "backend" not in text
    back = parse_pbtxt(text, repeated=REPEATED, maps=MAPS)
    config.pop("backend")
    config["dynamic_batching"] = {"priority_queue_policy": {"1": {"timeout_action": "DELAY"}}}
    assert back == config


def test_protobuf_reads_what_ferry_writes(tmp_path: Path):
    """Triton's own ModelConfig message accepts the text (tritonclient ships model_config.proto)."""
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    aux = {
        "max_batch_size": 8,
        "dynamic_batching": {"default_queue_policy": {"timeout_action": "DELAY"}, "priority_levels": 2},
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
        "parameters": {"a": "1"},
        "model_warmup": [{"name": "w", "batch_size": 1, "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [4]}}}],
    }
    spec = endpoint(aux, outputs=[("y", "float32", (-1, 3)), ("z", "bytes", (-1,))])
    files = model_files(spec, "clf_2", model_file(tmp_path, "m.onnx"), "0" * 64)
    message = text_format.Parse(files.config, model_config.ModelConfig())
    assert message.name == "clf_2" and message.instance_group[0].kind == model_config.ModelInstanceGroup.KIND_CPU
    assert list(message.input[0].dims) == [4] and message.output[1].data_type == model_config.TYPE_STRING
    assert message.output[1].HasField("reshape") and message.model_warmup[0].inputs["x"].dims == [4]


def test_enum_fields_are_all_of_model_config_protos():
    model_config = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    found, todo, seen = set(), [model_config.ModelConfig.DESCRIPTOR], set()
    while todo:
        message = todo.pop()
        seen.add(message.full_name)
        for field in message.fields:
            if field.enum_type is not None:
                found.add(field.name)
            if field.message_type is not None and field.message_type.full_name not in seen:
                todo.append(field.message_type)
    assert found == set(ENUMS)
