"""Loading the user's Preprocess code: hooks, injection, folders, isolation and error messages."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import types
from pathlib import Path

import pytest

from ferry.control.spec import EndpointSpec, TensorSpec
from ferry.errors import UserCodeError
from ferry.registry.artifacts import ArtifactRef
from ferry.serving.usercode.userclass import Hook, UserCode, load_user_code

SPEC = EndpointSpec(name="e", version="1", engine="custom")


def write(folder: Path, code: str, name: str = "preprocess.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(code))
    return path


LOADED: list[UserCode] = []


@pytest.fixture(autouse=True)
def close_loaded():
    yield
    while LOADED:
        LOADED.pop().close()


def load(source: Path | None, send_request=None, spec: EndpointSpec = SPEC) -> UserCode:
    user = load_user_code(source, spec, send_request)
    LOADED.append(user)
    return user


def test_no_source_means_no_code():
    user = load(None)
    assert user.instance is None and user.module is None
    assert user.preprocess == user.process == user.postprocess == user.load == user.unload == Hook(None, False)


def test_all_hooks_missing(tmp_path):
    user = load(write(tmp_path, "class Preprocess:\n    pass\n"))
    assert user.instance is not None
    for hook in (user.preprocess, user.process, user.postprocess, user.load, user.unload):
        assert hook.fn is None and not hook.is_async


def test_sync_and_async_hooks_are_told_apart(tmp_path):
    code = """
    class Preprocess:
        def preprocess(self, body, state, collect):
            return body + 1
        async def process(self, data, state, collect):
            return data * 2
        def postprocess(self, data, state, collect):
            return {"y": data}
        async def unload(self):
            pass
    """
    user = load(write(tmp_path, code))
    assert user.preprocess.fn is not None and not user.preprocess.is_async
    assert user.process.is_async and user.unload.is_async
    assert not user.postprocess.is_async and user.load.fn is None
    data = user.preprocess.fn(1, {}, None)
    assert user.postprocess.fn(asyncio.run(user.process.fn(data, {}, None)), {}, None) == {"y": 4}


def test_model_endpoint_is_set_before_load(tmp_path):
    code = """
    class Preprocess:
        def __init__(self):
            self.seen = getattr(self, "model_endpoint", "unset")
        def load(self, local_file_name):
            return (self.model_endpoint, local_file_name)
    """
    user = load(write(tmp_path, code))
    assert user.instance.seen == "unset"
    endpoint, local_file_name = user.load.fn("model.bin")
    assert (endpoint.spec, endpoint.key, endpoint.serving_url, local_file_name) == (SPEC, "e/1", "e/1", "model.bin")


def test_placeholder_send_request_is_replaced(tmp_path):
    code = """
    class Preprocess:
        def send_request(self, endpoint, version=None, data=None):
            return "placeholder"
        def process(self, data, state, collect):
            return self.send_request(endpoint="/other/", data=data)
    """
    calls = []

    def send_request(endpoint, version=None, data=None):
        calls.append((endpoint, version, data))
        return {"ok": True}

    user = load(write(tmp_path, code), send_request)
    assert user.process.fn({"x": 1}, {}, None) == {"ok": True}
    assert calls == [("/other/", None, {"x": 1})]


def test_placeholder_send_request_kept_without_ours(tmp_path):
    code = """
    class Preprocess:
        def send_request(self, endpoint, version=None, data=None):
            return "placeholder"
    """
    assert load(write(tmp_path, code)).instance.send_request("x") == "placeholder"


def test_folder_with_extra_module(tmp_path):
    write(tmp_path, "def double(x):\n    return 2 * x\n", "helpers.py")
    write(tmp_path / "pkg", "SCALE = 10\n", "__init__.py")
    code = """
    import helpers
    from pkg import SCALE

    class Preprocess:
        def preprocess(self, body, state, collect):
            return helpers.double(body) * SCALE
    """
    write(tmp_path, code)
    user = load(tmp_path)
    assert user.preprocess.fn(3, {}, None) == 60
    assert "helpers" not in sys.modules and "pkg" not in sys.modules
    assert str(tmp_path) not in sys.path


def test_two_folders_with_the_same_module_name_are_isolated(tmp_path, monkeypatch):
    unrelated = types.ModuleType("helpers")
    monkeypatch.setitem(sys.modules, "helpers", unrelated)
    code = """
    import helpers

    class Preprocess:
        def preprocess(self, body, state, collect):
            return helpers.answer()
    """
    users = []
    for word in ("first", "second"):
        folder = tmp_path / word
        write(folder, f"def answer():\n    return {word!r}\n", "helpers.py")
        write(folder, code)
        users.append(load(folder))
    assert [user.preprocess.fn(None, {}, None) for user in users] == ["first", "second"]
    assert users[0].module.__name__ != users[1].module.__name__
    assert sys.modules["helpers"] is unrelated


def test_dataclass_in_user_file(tmp_path):
    code = """
    from dataclasses import dataclass

    @dataclass
    class Point:
        x: int

    class Preprocess:
        def preprocess(self, body, state, collect):
            return Point(body)
    """
    assert load(write(tmp_path, code)).preprocess.fn(1, {}, None).x == 1


def test_no_preprocess_class(tmp_path):
    path = write(tmp_path, "class Model:\n    pass\n")
    with pytest.raises(UserCodeError, match="no class named Preprocess") as info:
        load(path)
    assert str(path) in str(info.value) and "e/1" in str(info.value)
    assert info.value.status_code == 422


def test_missing_file(tmp_path):
    with pytest.raises(UserCodeError, match="does not exist"):
        load(tmp_path)


def test_syntax_error(tmp_path):
    path = write(tmp_path, "class Preprocess:\n    def broken(self:\n        pass\n")
    with pytest.raises(UserCodeError, match="SyntaxError") as info:
        load(path)
    assert str(path) in str(info.value)


def test_exception_in_init(tmp_path):
    code = """
    class Preprocess:
        def __init__(self):
            raise RuntimeError("no GPU here")
    """
    path = write(tmp_path, code)
    with pytest.raises(UserCodeError, match="RuntimeError: no GPU here") as info:
        load(path)
    assert str(path) in str(info.value) and "line 4" in str(info.value)


def test_exception_in_a_helper_names_the_helper(tmp_path):
    write(tmp_path, "x = 1\nraise ValueError('bad config')\n", "helpers.py")
    write(tmp_path, "import helpers\n\nclass Preprocess:\n    pass\n")
    with pytest.raises(UserCodeError, match="ValueError: bad config.*helpers.py line 2"):
        load(tmp_path)
    assert "helpers" not in sys.modules


def test_numpy_float_gets_a_hint(tmp_path):
    code = """
    import numpy as np

    class Preprocess:
        def __init__(self):
            self.dtype = np.float
    """
    with pytest.raises(UserCodeError, match="AttributeError") as info:
        load(write(tmp_path, code))
    assert "np.float was removed in numpy 1.24: use float or np.float64" in str(info.value)


CLEARML_FIELDS = (
    "engine_type",
    "serving_url",
    "model_id",
    "version",
    "preprocess_artifact",
    "input_size",
    "input_type",
    "input_name",
    "output_size",
    "output_type",
    "output_name",
    "auxiliary_cfg",
)


ENDPOINT_CODE = f"""
class Preprocess:
    def load(self, local_file_name):
        return {{name: getattr(self.model_endpoint, name) for name in {CLEARML_FIELDS!r}}}
"""


def endpoint_fields(tmp_path: Path, spec: EndpointSpec) -> dict:
    return load(write(tmp_path, ENDPOINT_CODE), spec=spec).load.fn("model.bin")


def test_model_endpoint_answers_clearml_field_names(tmp_path):
    spec = EndpointSpec(
        name="digits",
        version="2",
        engine="onnxruntime",
        model_id="m-123",
        preprocess=ArtifactRef(url="file:///store/pre.py", sha256="0" * 64, size=10, filename="preprocess.py"),
        inputs=(
            TensorSpec(name="pixels", dtype="fp32", shape=(-1, 28, 28)),
            TensorSpec(name="mask", dtype="uint8", shape=(-1, 28, 28)),
        ),
        outputs=(TensorSpec(name="logits", dtype="float32", shape=(-1, 10)),),
        aux_config={"max_batch_size": 8},
    )
    assert endpoint_fields(tmp_path, spec) == {
        "engine_type": "onnxruntime",
        "serving_url": "digits/2",
        "model_id": "m-123",
        "version": "2",
        "preprocess_artifact": "file:///store/pre.py",
        # ClearML's ModelEndpoint converts these to lists even for a single tensor.
        "input_size": [[-1, 28, 28], [-1, 28, 28]],
        "input_type": ["float32", "uint8"],
        "input_name": ["pixels", "mask"],
        "output_size": [[-1, 10]],
        "output_type": ["float32"],
        "output_name": ["logits"],
        "auxiliary_cfg": {"max_batch_size": 8},
    }


def test_model_endpoint_without_version_tensors_or_aux(tmp_path):
    fields = endpoint_fields(tmp_path, EndpointSpec(name="plain", engine="custom"))
    assert fields["serving_url"] == "plain" and fields["version"] == ""
    assert {name: value for name, value in fields.items() if value is not None} == {
        "engine_type": "custom",
        "serving_url": "plain",
        "version": "",
    }


def test_model_endpoint_auxiliary_cfg_is_the_text_given(tmp_path):
    text = "parameters { key: 'x' }"
    spec = EndpointSpec(name="t", engine="custom", aux_config={"parameters": {"key": "x"}}, aux_config_text=text)
    assert endpoint_fields(tmp_path, spec)["auxiliary_cfg"] == text


def test_model_endpoint_is_read_only_and_keeps_ferry_names(tmp_path):
    code = """
    import copy, pickle

    class Preprocess:
        def process(self, data, state, collect):
            ep = self.model_endpoint
            try:
                ep.version = "9"
            except AttributeError as exc:
                refused = str(exc)
            copied = pickle.loads(pickle.dumps(copy.deepcopy(self))).model_endpoint
            return ep.name, ep.engine, ep.key, ep.aux_config, copied.serving_url, refused, ep.as_dict(True)
    """
    spec = EndpointSpec(name="e", version="3", engine="custom", aux_config={"a": 1})
    name, engine, key, aux, copied_url, refused, as_dict = load(write(tmp_path, code), spec=spec).process.fn(
        None, {}, None
    )
    assert (name, engine, key, aux, copied_url) == ("e", "custom", "e/3", {"a": 1}, "e/3")
    assert "model_endpoint is read-only" in refused and "'version'" in refused
    assert as_dict == {"engine_type": "custom", "serving_url": "e/3", "version": "3", "auxiliary_cfg": {"a": 1}}


def test_model_endpoint_unknown_field_lists_the_known_ones(tmp_path):
    user = load(write(tmp_path, "class Preprocess:\n    pass\n"))
    with pytest.raises(AttributeError, match="model_endpoint has no field 'input_shape'.*input_size"):
        user.instance.model_endpoint.input_shape  # noqa: B018
