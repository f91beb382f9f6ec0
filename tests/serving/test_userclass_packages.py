"""The preprocess folder as a package per version: imports at call time, pickle, versions apart, close."""

from __future__ import annotations

import asyncio
import pickle
import sys
import textwrap
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ferry.control.spec import EndpointSpec
from ferry.errors import UserCodeError
from ferry.serving.usercode.userclass import PACKAGE_PREFIX, UserCode, load_user_code

LAZY_CODE = """
class Preprocess:
    def preprocess(self, body, state, collect):
        import helpers  # at request time, as plain Python allows
        from helpers import answer

        return helpers.answer(), answer()
"""

HELPERS = """
import consts  # a helper importing a sibling by plain name


def answer():
    return consts.WORD
"""


def folder_with(root: Path, preprocess: str, **files: str) -> Path:
    """Write preprocess.py plus ``files`` (name -> code; 'a/b' for subfolders) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, code in {"preprocess": preprocess, **files}.items():
        path = root / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code))
    return root


@pytest.fixture
def loaded():
    """load(folder, version) -> UserCode; every version loaded is closed afterwards."""
    users: list[UserCode] = []

    def load(folder: Path, version: str = "1") -> UserCode:
        users.append(load_user_code(folder, EndpointSpec(name="m", version=version, engine="custom"), None))
        return users[-1]

    yield load
    for user in users:
        user.close()


def user_modules() -> set[str]:
    return {name for name in sys.modules if name.startswith(PACKAGE_PREFIX)}


def version_folder(root: Path, word: str) -> Path:
    return folder_with(root / word, LAZY_CODE, helpers=HELPERS, consts=f"WORD = {word!r}\n")


def test_imports_inside_hooks_at_call_time(tmp_path, loaded):
    code = """
    class Preprocess:
        def preprocess(self, body, state, collect):
            import pkg.sub
            from pkg.sub import triple
            from tools.maths import half  # tools/ has no __init__.py: a namespace package
            from . import helpers  # relative to the folder's package

            return pkg.sub.triple(body), triple(body), half(body), helpers.NAME
    """
    folder = folder_with(
        tmp_path,
        code,
        helpers="NAME = 'helpers'\n",
        **{
            "pkg/__init__": "",
            "pkg/sub": "def triple(x):\n    return 3 * x\n",
            "tools/maths": "half = lambda x: x / 2",
        },
    )
    user = loaded(folder)
    assert user.preprocess.fn(4, {}, None) == (12, 12, 2.0, "helpers")
    assert "pkg" not in sys.modules and "helpers" not in sys.modules and "tools" not in sys.modules


def test_pickle_round_trip_of_classes_from_the_folder(tmp_path, loaded):
    code = """
    import pickle
    from dataclasses import dataclass

    import shapes


    @dataclass
    class Local:
        x: int


    class Preprocess:
        def preprocess(self, body, state, collect):
            return pickle.dumps((shapes.Box(body), Local(body)))

        def postprocess(self, data, state, collect):
            box, local = pickle.loads(data)
            return type(box).__name__, box.size, type(local).__name__, local.x
    """
    shapes = """
    class Box:
        def __init__(self, size):
            self.size = size
    """
    user = loaded(folder_with(tmp_path, code, shapes=shapes))
    data = user.preprocess.fn(7, {}, None)
    assert user.postprocess.fn(data, {}, None) == ("Box", 7, "Local", 7)
    box, local = pickle.loads(data)  # outside the user's code too, while the version is loaded
    assert (box.size, local.x) == (7, 7)
    assert type(box).__module__.endswith(".shapes") and type(local).__module__.endswith(".preprocess")


def test_two_versions_with_different_helpers_stay_apart(tmp_path, loaded, monkeypatch):
    unrelated = types.ModuleType("helpers")
    monkeypatch.setitem(sys.modules, "helpers", unrelated)
    first = loaded(version_folder(tmp_path, "first"), "1")
    second = loaded(version_folder(tmp_path, "second"), "2")
    # Both loaded before either hook imported anything; then interleaved, and again once imported.
    for _ in range(2):
        assert second.preprocess.fn(None, {}, None) == ("second", "second")
        assert first.preprocess.fn(None, {}, None) == ("first", "first")
    assert sys.modules["helpers"] is unrelated and "consts" not in sys.modules


def test_versions_apart_under_concurrent_calls(tmp_path, loaded):
    users = {word: loaded(version_folder(tmp_path, word), word) for word in ("a", "b", "c")}

    def call(word: str) -> bool:
        return users[word].preprocess.fn(None, {}, None) == (word, word)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, [word for _ in range(200) for word in users]))
    assert len(answers) == 600 and all(answers)


def test_close_removes_the_versions_modules(tmp_path, loaded):
    before = user_modules()
    user = loaded(version_folder(tmp_path, "gone"))
    user.preprocess.fn(None, {}, None)
    mine = user_modules() - before
    assert {name.split(".", 1)[-1] for name in mine} >= {"preprocess", "helpers", "consts"}
    data = pickle.dumps(user.module.Preprocess())
    user.close()
    user.close()  # twice is harmless
    assert user_modules() == before
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(data)


def test_failed_import_leaves_no_modules(tmp_path, loaded):
    before = user_modules()
    folder = folder_with(tmp_path, "import helpers\n\nclass Preprocess:\n    pass\n", helpers="1 / 0\n")
    with pytest.raises(UserCodeError, match="ZeroDivisionError.*helpers.py line 1"):
        loaded(folder)
    assert user_modules() == before


def test_versions_apart_over_the_data_plane(service):
    code = LAZY_CODE.replace("def preprocess", "def process")
    for word in ("1", "2"):
        service.add("lazy", version=word, code=service.code(code, helpers=HELPERS, consts=f"WORD = 'v{word}'"))
    service.apply()

    async def go():
        service.plane.loop = asyncio.get_running_loop()
        return [await service.plane.infer("lazy", version, {}) for version in ("1", "2", "1", "2")]

    assert asyncio.run(go()) == [("v1", "v1"), ("v2", "v2"), ("v1", "v1"), ("v2", "v2")]
