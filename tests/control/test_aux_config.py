"""Aux config: typed keys per engine checked at `model add`, config.pbtxt mapped or refused, Triton passed through."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ferry.control.aux_config import aux_keys, queue_limits, validate_aux_config
from ferry.control.aux_models import AUX_MODELS
from ferry.control.pbtxt import parse_pbtxt
from ferry.control.spec import EndpointSpec, ServiceConfig
from ferry.control.store import Store
from ferry.control.triton_config import MAPS, REPEATED, TRITON_FIELDS
from ferry.errors import InvalidInput
from ferry.serving.batching.batcher import BatchPolicy
from tests.conftest import Ferry

DOCS = Path(__file__).parents[2] / "docs" / "aux-config.md"

CONFIG_PBTXT = """
name: "minilm"
platform: "onnxruntime_onnx"
max_batch_size: 16
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 2000
  default_queue_policy { max_queue_size: 64  default_timeout_microseconds: 5000000 }
}
instance_group [ { count: 2, kind: KIND_CPU } ]
parameters { key: "intra_op_num_threads" value: { string_value: "2" } }
"""


def refusal(engine: str, aux: dict, text: str | None = None) -> str:
    with pytest.raises(InvalidInput) as caught:
        validate_aux_config(engine, aux, text)
    return str(caught.value)


def test_unknown_key_is_refused_with_the_valid_keys_and_a_guess():
    message = refusal("onnxruntime", {"max_batch_sise": 8})
    assert message.startswith("--aux-config: unknown key 'max_batch_sise' for the onnxruntime engine")
    assert "did you mean 'max_batch_size'?" in message
    listed = message.split("valid keys: ", 1)[1].split(", ")
    assert listed == aux_keys("onnxruntime")
    assert {"max_batch_size", "graph_optimization_level", "request_timeout_ms", "providers"} <= set(listed)


def test_keys_belong_to_their_engines():
    message = refusal("custom", {"max_batch_size": 8})
    assert "the custom engine does not batch" in message and "max_batch_size" not in message.split("valid keys")[1]
    assert "graph_optimization_level" in refusal("torchscript", {"graph_optimization_level": "all"})
    assert "is a Triton setting: serve the model with --engine triton" in refusal("sklearn", {"sequence_batching": {}})
    nested = refusal("onnxruntime", {"dynamic_batching": {"preserve_ordering": True}})
    assert "unknown key 'dynamic_batching.preserve_ordering'" in nested
    assert "valid keys: dynamic_batching.default_queue_policy.default_timeout_microseconds" in nested


@pytest.mark.parametrize(
    ("engine", "aux", "expected"),
    [
        ("onnxruntime", {"max_batch_size": "abc"}, "max_batch_size='abc' for the onnxruntime engine: Input should be"),
        (
            "sklearn",
            {"max_batch_size": 0},
            "max_batch_size=0 for the sklearn engine: out of range; valid: 1 <= value <= 4096",
        ),
        ("onnxruntime", {"graph_optimization_level": "max"}, "Input should be 'disable', 'basic', 'extended' or 'all'"),
        ("custom", {"request_timeout_ms": -5}, "request_timeout_ms=-5"),
        ("xgboost", {"max_batch_size": 4, "preferred_batch_size": [2, 8]}, "preferred batch sizes [8] exceed"),
        ("lightgbm", {"instances": 2, "batch_instances": 2}, "instances and batch_instances set the same thing"),
    ],
)
def test_mistyped_values_are_refused_naming_the_key(engine: str, aux: dict, expected: str):
    assert expected in refusal(engine, aux)


def test_valid_keys_come_back_typed_as_the_user_wrote_them():
    aux = {"max_batch_size": 8, "preferred_batch_size": 4, "providers": "A, B", "graph_optimization_level": "BASIC"}
    assert validate_aux_config("onnxruntime", aux) == {
        "max_batch_size": 8,
        "preferred_batch_size": [4],
        "providers": ["A", "B"],
        "graph_optimization_level": "basic",
    }
    assert validate_aux_config("custom", {"warmup": {"x": [1, 2]}, "max_queue_size": 10}) == {
        "warmup": {"x": [1, 2]},
        "max_queue_size": 10,
    }


def test_config_pbtxt_becomes_the_batchers_keys():
    aux = validate_aux_config("onnxruntime", {}, CONFIG_PBTXT)
    assert aux["max_batch_size"] == 16 and aux["instances"] == 2 and aux["intra_op_num_threads"] == 2
    spec = EndpointSpec(name="e", engine="onnxruntime", model_id="m", aux_config=aux)
    policy = BatchPolicy.from_spec(spec)
    assert (policy.max_batch_size, policy.max_queue_delay_s, policy.preferred_sizes, policy.instances) == (
        16,
        0.002,
        (4, 8),
        2,
    )
    assert queue_limits("onnxruntime", aux).max_queue_size == 64
    assert queue_limits("onnxruntime", aux).request_timeout_s == 5.0


@pytest.mark.parametrize(
    ("engine", "text", "expected"),
    [
        ("onnxruntime", "optimization { graph { level: 1 } }", "field 'optimization' cannot apply to the onnxruntime"),
        ("onnxruntime", 'input [ { name: "x" data_type: TYPE_FP32 dims: [3] } ]', "--input-name, --input-type"),
        ("torchscript", 'platform: "onnxruntime_onnx"', "'onnxruntime_onnx' is not what the torchscript engine runs"),
        ("onnxruntime", "instance_group { count: 1 kind: KIND_GPU }", "kind: KIND_GPU cannot apply"),
        ("onnxruntime", "dynamic_batching { priority_levels: 2 }", "'dynamic_batching.priority_levels' is a Triton"),
        ("custom", "max_batch_size: 8", "the custom engine does not batch"),
        ("onnxruntime", "max_batch_size 8", "config.pbtxt line 1: expected ':' or '{'"),
        ("onnxruntime", "max_batch_size: 4\ndynamic_batching {\n", "config.pbtxt line 2: expected '}'"),
    ],
)
def test_config_pbtxt_that_cannot_be_honoured_is_refused_with_the_reason(engine: str, text: str, expected: str):
    assert expected in refusal(engine, {}, text)


def test_triton_passes_its_model_config_through():
    text = (
        CONFIG_PBTXT
        + 'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]\noutput { name: "y" data_type: TYPE_FP32 dims: 2 }'
    )
    aux = validate_aux_config("triton", {"max_queue_size": 8}, text)
    assert aux["platform"] == "onnxruntime_onnx" and aux["max_queue_size"] == 8
    assert aux["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}]
    assert aux["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert aux["parameters"] == {"intra_op_num_threads": {"string_value": "2"}}
    assert validate_aux_config("triton", {"sequence_batching": {"max_sequence_idle_microseconds": 5}}) == {
        "sequence_batching": {"max_sequence_idle_microseconds": 5}
    }


def test_triton_refuses_what_its_schema_does_not_have():
    message = refusal("triton", {"platfrom": "onnxruntime_onnx"})
    assert "unknown key 'platfrom' for the triton engine (did you mean 'platform'?)" in message
    assert "instance_group" in message and "version_policy" in message and "max_queue_size" in message
    assert "input.0.data_type='FP32'" in refusal("triton", {"input": [{"name": "x", "data_type": "FP32"}]})
    assert "one scheduling choice" in refusal("triton", {"dynamic_batching": {}, "sequence_batching": {}})
    assert "max_batch_size='eight'" in refusal("triton", {}, 'max_batch_size: "eight"')


def test_every_key_is_in_the_docs_table():
    text = DOCS.read_text()
    table = text[text.index("| key | engines |") :].split("\n\n", 1)[0].splitlines()[2:]
    first_cells = {row.split("|")[1] for row in table}
    documented = {
        key for cell in first_cells if not cell.startswith(" Triton") for key in re.findall(r"`([a-z_.]+)`", cell)
    }
    declared = {key for engine in AUX_MODELS if engine != "triton" for key in aux_keys(engine)}
    assert documented == declared
    (triton_row,) = [cell for cell in first_cells if cell.startswith(" Triton")]
    assert re.findall(r"`([a-z_]+)`", triton_row) == list(TRITON_FIELDS)


def test_revisions_written_before_the_check_still_load(tmp_path: Path):
    store = Store.open(f"sqlite:///{tmp_path / 'ferry.db'}")
    service = store.create_service("old")
    legacy = EndpointSpec(name="e", engine="custom", aux_config={"max_batch_sise": 8})

    def change(config: ServiceConfig):
        return config.model_copy(update={"endpoints": {"e": legacy}}), "written by an older ferry"

    store.commit(service.id, change)
    assert store.get_revision(service.id).config.endpoints["e"].aux_config == {"max_batch_sise": 8}


def test_cli_refuses_a_misspelt_key_and_writes_nothing(ferry_sqlite: Ferry):
    ferry_sqlite.service()
    add = ("model", "add", "--engine", "custom", "--endpoint", "e", "--aux-config")
    result = ferry_sqlite(*add, "max_batch_sise=8", ok=False)
    assert result.code != 0 and "Traceback" not in result.err
    assert "--aux-config: unknown key 'max_batch_sise' for the custom engine" in result.err
    assert "valid keys: dynamic_batching.default_queue_policy.default_timeout_microseconds" in result.err
    assert "max_queue_size" in ferry_sqlite(*add, "max_queue_size=abc", ok=False).err
    assert ferry_sqlite("history", "--json").json()[-1]["revision"] == 1


def test_cli_reads_a_config_pbtxt_into_the_endpoint(ferry_sqlite: Ferry, tmp_path: Path):
    ferry_sqlite.service()
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx")
    up = ferry_sqlite("model", "upload", "--name", "m", "--path", str(model)).out
    mid = up.strip().rsplit("=", 1)[1]
    pbtxt = tmp_path / "config.pbtxt"
    pbtxt.write_text(CONFIG_PBTXT)
    ferry_sqlite("model", "add", "--engine", "onnxruntime", "--endpoint", "e", "--model-id", mid,
                 "--aux-config", str(pbtxt))  # fmt: skip
    endpoint = ferry_sqlite("model", "endpoints", "--json").json()["endpoints"]["e"]
    assert endpoint["aux_config"]["max_batch_size"] == 16 and endpoint["aux_config"]["instances"] == 2
    pbtxt.write_text("sequence_batching { }")
    err = ferry_sqlite("model", "add", "--engine", "onnxruntime", "--endpoint", "f", "--model-id", mid,
                       "--aux-config", str(pbtxt), ok=False).err  # fmt: skip
    assert "field 'sequence_batching' cannot apply to the onnxruntime engine" in err


def test_pbtxt_reader_takes_the_text_format_triton_users_write():
    text = """
    # a comment
    name: "a" 'b'                       # adjacent strings join
    dynamic_batching < preferred_batch_size: 4 >
    input { name: "x", data_type: TYPE_FP32, dims: [ -1, 3 ] };
    parameters [ { key: "k" value { string_value: "v" } } ]
    version_policy: { latest { num_versions: 2 } }
    """
    assert parse_pbtxt(text, REPEATED, MAPS) == {
        "name": "ab",
        "dynamic_batching": {"preferred_batch_size": [4]},
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3]}],
        "parameters": {"k": {"string_value": "v"}},
        "version_policy": {"latest": {"num_versions": 2}},
    }
    with pytest.raises(InvalidInput, match="field 'max_batch_size' is given 2 times"):
        parse_pbtxt("max_batch_size: 1 max_batch_size: 2", REPEATED, MAPS)


def test_batching_is_on_by_default_for_engines_that_batch_and_triton_s_zero_turns_it_off():
    def policy(engine, aux):
        return BatchPolicy.from_spec(EndpointSpec(name="e", engine=engine, model_id="m", aux_config=aux))

    for engine in ("sklearn", "xgboost", "lightgbm", "onnxruntime", "torchscript"):
        default = policy(engine, {})
        assert (default.max_batch_size, default.implicit, default.max_queue_delay_s) == (32, True, 0.0)
        assert (
            policy(engine, {"max_batch_size": 8}).max_batch_size,
            policy(engine, {"max_batch_size": 8}).implicit,
        ) == (8, False)
        assert not policy(engine, {"max_batch_size": 1}).enabled
    assert not policy("custom", {}).enabled and not policy("llm", {}).enabled
    assert validate_aux_config("onnxruntime", {}, "max_batch_size: 0") == {"max_batch_size": 1}
    assert validate_aux_config("sklearn", {"preferred_batch_size": [8, 32]}) == {"preferred_batch_size": [8, 32]}
    with pytest.raises(InvalidInput, match="exceed max_batch_size=32"):
        validate_aux_config("sklearn", {"preferred_batch_size": [64]})
