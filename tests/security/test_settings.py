"""Settings that would open or wedge a server: token edge cases, absurd aux-config values, unreadable files."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from ferry.control.aux_config import validate_aux_config
from ferry.control.aux_models import MAX_BATCH, MAX_DELAY_MS, MAX_INSTANCES
from ferry.control.spec import EndpointSpec
from ferry.errors import InvalidInput
from ferry.serving.batching.batcher import BatchPolicy
from ferry.serving.revisions.swap import _check_delay
from ferry.tokens import load_tokens
from tests.conftest import FERRY_BIN, Ferry, free_port


@pytest.mark.parametrize("inline", [" ", "\t", " , ", ",", ",,", "\n"])
def test_a_token_setting_that_holds_no_token_is_refused(inline):
    with pytest.raises(InvalidInput, match="FERRY_SERVE_TOKENS holds no token"):
        load_tokens(inline)


def test_an_empty_token_variable_means_unset():
    assert load_tokens("") == {}


@pytest.mark.parametrize("inline", [" ", ","])
def test_serve_refuses_to_start_on_a_blank_token_setting(ferry_sqlite: Ferry, inline):
    ferry_sqlite.service()
    proc = subprocess.run(
        [FERRY_BIN, "serve", "--port", str(free_port())],
        env={**_env(), "FERRY_SERVE_TOKENS": inline},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0 and "FERRY_SERVE_TOKENS holds no token" in proc.stderr
    assert "Traceback" not in proc.stderr


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


@pytest.mark.parametrize(
    ("engine", "aux", "text"),
    [
        ("sklearn", {"max_queue_delay_ms": 1e308}, f"valid: 0 <= value <= {MAX_DELAY_MS:g}"),
        ("sklearn", {"max_batch_size": 10**20}, f"valid: 1 <= value <= {MAX_BATCH}"),
        ("onnxruntime", {"instances": 100_000}, f"valid: 1 <= value <= {MAX_INSTANCES}"),
        ("onnxruntime", {"preferred_batch_size": [2, 10**6]}, f"<= {MAX_BATCH}"),
        ("custom", {"max_queue_size": 10**12}, "valid: 1 <= value <= 1000000"),
        ("custom", {"request_timeout_ms": 0}, "valid: 0 < value <= 3600000"),
        ("custom", {"inline_budget_ms": float("nan")}, "not a finite number; valid: 0 <= value <= 1000"),
        ("sklearn", {"pad_value": float("inf")}, "finite"),
        ("sklearn", {"ray": {"max_replicas": 10**9}}, "ray.max_replicas=1000000000"),
        ("sklearn", {"dynamic_batching": {"max_queue_delay_microseconds": 1e300}}, "<= 10000000"),
        ("sklearn", {"max_queue_delay_ms": 500, "request_timeout_ms": 200}, "is not below the request timeout"),
        (
            "sklearn",
            {"dynamic_batching": {"max_queue_delay_microseconds": 300_000, "default_queue_policy": {
                "default_timeout_microseconds": 100_000}}},
            "is not below the request timeout",
        ),
    ],
)  # fmt: skip
def test_absurd_aux_values_are_refused_with_the_valid_range(engine, aux, text):
    with pytest.raises(InvalidInput) as caught:
        validate_aux_config(engine, aux)
    assert text in str(caught.value)


def test_sane_values_at_the_bounds_pass():
    aux = {"max_batch_size": MAX_BATCH, "max_queue_delay_ms": 5, "request_timeout_ms": 10, "instances": MAX_INSTANCES}
    assert validate_aux_config("onnxruntime", aux) == aux


def test_a_delay_past_the_servers_default_timeout_is_reported_at_load(service, caplog):
    """The endpoint names no timeout, so only the server knows its default: a warning that `ferry status` shows."""
    service.add(
        "slow", "sklearn", model_id=service.model(), aux_config={"max_batch_size": 4, "max_queue_delay_ms": 5000}
    )
    service.apply()
    runtime = service.plane.table.runtimes["slow"]
    assert BatchPolicy.from_spec(runtime.spec).max_queue_delay_s == 5.0
    with caplog.at_level(logging.WARNING, logger="ferry.serving.reconciler"):
        _check_delay(runtime, 2.0)
        _check_delay(runtime, 60.0)
    assert caplog.text.count("is not below its request timeout") == 1


def test_cli_names_a_binary_aux_config_file_without_a_traceback(ferry_sqlite: Ferry, tmp_path: Path):
    ferry_sqlite.service()
    binary = tmp_path / "config.bin"
    binary.write_bytes(b"\x80\x81\xfe\xff" * 10)
    code = tmp_path / "preprocess.py"
    code.write_text("class Preprocess:\n    pass\n")
    failed = ferry_sqlite("model", "add", "--engine", "custom", "--endpoint", "e", "--preprocess", str(code),
                          "--aux-config", str(binary), ok=False)  # fmt: skip
    assert "config.bin" in failed.err and "not UTF-8 text" in failed.err and "Traceback" not in failed.err
    applied = ferry_sqlite("apply", "-f", str(binary), ok=False)
    assert "config.bin" in applied.err and "Traceback" not in applied.err


def test_endpoint_spec_keeps_stored_aux_values():
    """Only new revisions are checked: a stored aux value past today's bounds still loads."""
    spec = EndpointSpec(name="e", engine="sklearn", model_id="m", aux_config={"max_batch_size": 10**6})
    assert spec.aux_config["max_batch_size"] == 10**6
