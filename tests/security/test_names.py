"""Names where they enter (the CLI, `apply -f`): bounded, control characters refused, markup kept inert.

Input and output names stay free text (models name tensors ``input.1``, ``onnx::Gemm_0``, ``x:0``), so
what keeps a name such as ``<img src=x onerror=...>`` harmless is escaping: /docs is rendered in Debian's
Chromium (driven by Playwright) with such a name served, and no script may run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from ferry.control.spec import NAME_MAX, STORED, TENSOR_NAME_MAX, EndpointSpec, ServiceConfig, TensorSpec
from ferry.control.store import Store
from tests.browser import chromium_page
from tests.conftest import Ferry
from tests.server import Server

MARKUP = "<img src=x onerror=window.__ferry_pwned=1>"
CODE = "class Preprocess:\n    def process(self, data, state, collect=None):\n        return data\n"


@pytest.mark.parametrize("name", ["input.1", "onnx::Gemm_0", "x:0", "input_ids", "serving_default_x:0", MARKUP])
def test_real_tensor_names_are_admitted(name):
    assert TensorSpec(name=name).name == name


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a" * (TENSOR_NAME_MAX + 1), f"at most {TENSOR_NAME_MAX}"),
        ("x\n0", "control character"),
        ("x\x00", "control character"),
        ("x\x1b[31m", "control character"),
    ],
)
def test_tensor_names_are_bounded(name, text):
    with pytest.raises(ValidationError, match=text):
        TensorSpec(name=name)


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"name": "e" * (NAME_MAX + 1)}, f"at most {NAME_MAX}"),
        ({"name": "e", "version": "1" * (NAME_MAX + 1)}, f"at most {NAME_MAX}"),
        ({"name": "ab/1"}, "for a version give --endpoint ab --version 1"),
        ({"name": "a b"}, "use letters, digits"),
    ],
)
def test_endpoint_names_are_bounded(fields, text):
    with pytest.raises(ValidationError, match=text):
        EndpointSpec(engine="custom", **fields)
    assert EndpointSpec(engine="custom", name="e" * NAME_MAX).name == "e" * NAME_MAX


def test_a_stored_config_past_the_limits_still_loads_with_a_warning(tmp_path, caplog):
    """Revisions written before the limits keep loading: a server must not refuse its own store."""
    long_name, bad_input = "e" * (NAME_MAX + 10), "x\ty"
    document = {"endpoints": {long_name: {"name": long_name, "engine": "custom", "inputs": [{"name": bad_input}]}}}
    store = Store.open(f"sqlite:///{tmp_path / 'ferry.db'}")
    service = store.create_service("old").id
    with pytest.raises(ValidationError):
        ServiceConfig.model_validate(document)
    old = ServiceConfig.model_validate(document, context=STORED)
    store.commit(service, lambda _config: (old, "written by an older ferry"))
    with caplog.at_level(logging.WARNING, logger="ferry.control.spec"):
        loaded = store.get_revision(service).config
    assert loaded.endpoints[long_name].inputs[0].name == bad_input
    assert "breaks a limit" in caplog.text


def test_the_cli_refuses_names_past_the_limits(ferry_sqlite: Ferry, tmp_path: Path):
    ferry_sqlite.service()
    code = tmp_path / "preprocess.py"
    code.write_text(CODE)
    long = ferry_sqlite("model", "add", "--engine", "custom", "--endpoint", "e" * 100_000, "--preprocess",
                        str(code), ok=False)  # fmt: skip
    assert f"at most {NAME_MAX}" in long.err and "Traceback" not in long.err
    slash = ferry_sqlite(
        "model", "add", "--engine", "custom", "--endpoint", "ab/1", "--preprocess", str(code), ok=False
    )
    assert "--endpoint ab --version 1" in slash.err
    control = ferry_sqlite("model", "add", "--engine", "custom", "--endpoint", "e", "--preprocess", str(code),
                           "--input-name", "a\x07b", ok=False)  # fmt: skip
    assert "control character" in control.err
    config = tmp_path / "service.yaml"
    config.write_text(f"endpoints:\n  {'n' * 200}:\n    engine: custom\n")
    applied = ferry_sqlite("apply", "-f", str(config), ok=False)
    assert f"at most {NAME_MAX}" in applied.err and "Traceback" not in applied.err


@pytest.fixture
def markup_server(ferry_sqlite: Ferry, tmp_path: Path):
    """`ferry serve` with an endpoint whose input name is markup that would run script if written as HTML."""
    ferry_sqlite.service()
    code = tmp_path / "preprocess.py"
    code.write_text(CODE)
    ferry_sqlite("model", "add", "--engine", "custom", "--endpoint", "e", "--preprocess", str(code),
                 "--input-name", MARKUP, "--input-type", "float32", "--input-size", "2")  # fmt: skip
    server = Server(tmp_path)
    try:
        server.wait_ready()
        server.wait_endpoint("e", [1, 2])
        yield server
    finally:
        server.stop()


def test_docs_shows_markup_in_a_name_as_text_and_runs_no_script(markup_server: Server):
    assert MARKUP in markup_server.client.get("/openapi.json").text  # the name is served as it is
    with chromium_page() as (page, problems):
        page.goto(f"{markup_server.url}/docs")
        page.wait_for_selector("section h3")
        page.wait_for_load_state("networkidle")
        text = page.inner_text("#paths")
        pwned = page.evaluate("() => window.__ferry_pwned === 1")
        images = page.evaluate("() => document.querySelectorAll('#paths img').length")
    assert not pwned and not [p for p in problems if p.startswith("dialog")], "the name ran as script"
    assert images == 0, "the name became markup"
    assert "POST /serve/e" in text and MARKUP in text  # shown, as text
