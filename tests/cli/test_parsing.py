"""The flag-value forms that ClearML-Serving users type."""

from __future__ import annotations

import pytest

from ferry.cli.parsing import build_tensors, parse_aux_config, parse_shapes
from ferry.control.aux_config import validate_aux_config
from ferry.errors import InvalidInput


@pytest.mark.parametrize(
    ("tokens", "shapes"),
    [
        (["[-1, -1]", "[-1, -1]"], [(-1, -1), (-1, -1)]),
        (["1", "28", "28"], [(1, 28, 28)]),
        (["-1", "10"], [(-1, 10)]),
        (["[1,", "28]"], [(1, 28)]),  # an unquoted list split by the shell
        (["[-1, 2] [3]"], [(-1, 2), (3,)]),
    ],
)
def test_shapes(tokens, shapes):
    assert parse_shapes(tokens) == shapes


@pytest.mark.parametrize("tokens", [["[1, x]"], ["abc"], ["[[1]]"]])
def test_bad_shapes_name_the_flag(tokens):
    with pytest.raises(InvalidInput, match="--input-size"):
        parse_shapes(tokens)


def test_tensors_zip_names_types_sizes_and_broadcast_one_type():
    specs = build_tensors(["a", "b"], ["int64"], ["[-1, -1]", "[-1, 3]"], "input")
    assert [(t.name, t.dtype, t.shape) for t in specs] == [("a", "int64", (-1, -1)), ("b", "int64", (-1, 3))]


def test_tensors_reject_mismatched_counts_and_unknown_dtype():
    with pytest.raises(InvalidInput, match="--input-type has 2 values for 3 tensors"):
        build_tensors(None, ["int64", "float32"], ["[1]", "[2]", "[3]"], "input")
    with pytest.raises(InvalidInput, match="--input-name has 2 values for 3 tensors"):
        build_tensors(["a", "b"], None, ["[1]", "[2]", "[3]"], "input")
    with pytest.raises(InvalidInput, match="unknown dtype 'float33'"):
        build_tensors(None, ["float33"], None, "output")


def test_aux_config_values_and_dotted_keys():
    config, text = parse_aux_config(
        ['platform="onnxruntime_onnx"', "max_batch_size=32", "dynamic_batching.preferred_batch_size=[1,2,4,8]"]
    )
    assert text is None
    assert config == {
        "platform": "onnxruntime_onnx",
        "max_batch_size": 32,
        "dynamic_batching": {"preferred_batch_size": [1, 2, 4, 8]},
    }


def test_aux_config_file_and_errors(tmp_path):
    pbtxt = tmp_path / "config.pbtxt"
    pbtxt.write_text('platform: "onnxruntime_onnx"\n')
    assert parse_aux_config([str(pbtxt)]) == ({}, 'platform: "onnxruntime_onnx"\n')
    with pytest.raises(InvalidInput, match="neither key=value nor an existing file"):
        parse_aux_config(["missing.pbtxt"])
    with pytest.raises(InvalidInput, match="already set"):
        parse_aux_config(["a=1", "a.b=2"])


def test_dotted_aux_keys_reach_the_engines_check_nested():
    config, _ = parse_aux_config(["max_batch_size=8", "dynamic_batching.max_queue_delay_microseconds=500"])
    assert validate_aux_config("onnxruntime", config) == {
        "max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_microseconds": 500.0},
    }
    config, _ = parse_aux_config(["dynamic_batching.max_queue_delay_microsecond=500"])
    with pytest.raises(InvalidInput, match="unknown key 'dynamic_batching.max_queue_delay_microsecond'"):
        validate_aux_config("onnxruntime", config)
