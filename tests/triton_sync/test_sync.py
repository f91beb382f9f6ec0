"""`ferry triton sync` against a real tritonserver in explicit mode, with Python-backend models from the registry."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ferry.control.pbtxt import parse_pbtxt
from ferry.control.triton_config import MAPS, REPEATED
from tests.conftest import FERRY_BIN, Ferry, free_port
from tests.triton import MODEL_PY_HEADER, Triton, python_model

SCALE_MODEL = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.scale = np.float32(json.load(open(os.path.join(os.path.dirname(__file__), "scale.json"))))

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() * self.scale)]
            )
            for r in requests
        ]
"""
BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("boom: this model cannot start")

    def execute(self, requests):
        return []
"""


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    repository = tmp_path_factory.mktemp("triton") / "models"
    repository.mkdir()
    with Triton(repository, explicit=True) as server:
        yield server


@pytest.fixture
def repository(triton: Triton) -> Iterator[Path]:
    """The server's repository, emptied (and its models unloaded) after each test."""
    yield triton.repository
    for model in triton.index():
        triton.client.post(f"/v2/repository/models/{model['name']}/unload")
    for folder in triton.repository.iterdir():
        subprocess.run(["rm", "-rf", str(folder)], check=True)


def model_folder(root: Path, name: str, model_py: str, scale: float = 2.0) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "model.py").write_text(MODEL_PY_HEADER + model_py)
    (folder / "scale.json").write_text(str(scale))
    return folder


def service_with_triton(ferry: Ferry, triton: Triton) -> str:
    sid = ferry.service()
    ferry("--id", sid, "config", "--triton-grpc-server", triton.grpc_address)
    return sid


def add_endpoint(ferry: Ferry, sid: str, folder: Path, endpoint: str, version: str) -> None:
    up = ferry("--id", sid, "model", "upload", "--name", folder.name, "--path", str(folder))
    model_id = up.out.strip().rsplit("=", 1)[1]
    ferry(
        "--id", sid, "model", "add", "--engine", "triton", "--endpoint", endpoint, "--version", version,
        "--model-id", model_id, "--input-name", "INPUT0", "--input-type", "float32", "--input-size", "[-1, 2]",
        "--output-name", "OUTPUT0", "--output-type", "float32", "--output-size", "[-1, 2]",
        "--aux-config", "max_batch_size=8", "instance_group.kind=KIND_CPU", "instance_group.count=1",
        "request_timeout_ms=5000",
    )  # fmt: skip


def infer(triton: Triton, model: str, values: list[float]) -> list[float]:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": values}]}
    response = httpx.post(f"{triton.url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]


def test_sync_once_writes_the_folder_loads_it_and_reloads_only_what_changed(
    ferry_sqlite: Ferry, triton: Triton, repository: Path, tmp_path: Path
):
    ferry = ferry_sqlite
    sid = service_with_triton(ferry, triton)
    add_endpoint(ferry, sid, model_folder(tmp_path, "doubler", SCALE_MODEL), "scale", "1")
    handmade = python_model(repository, "handmade", 'name: "handmade"\nbackend: "python"\n', "")
    sync = ("--id", sid, "triton", "sync", "--model-repository", str(repository), "--triton-url", triton.url)

    first = ferry(*sync, "--json").json()
    assert first["models"] == [
        {"endpoint": "scale/1", "model": "scale_1", "change": "loaded", "error": "", "state": "ready"}
    ]
    config = parse_pbtxt((repository / "scale_1/config.pbtxt").read_text(), repeated=REPEATED, maps=MAPS)
    assert config == {
        "name": "scale_1",
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [2]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [2]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
    }
    assert {"model.py", "scale.json"} <= {p.name for p in (repository / "scale_1/1").iterdir()}  # the folder artifact
    assert triton.model_ready("scale_1")
    assert infer(triton, "scale_1", [1.5, -2.0]) == [3.0, -4.0]

    add_endpoint(ferry, sid, model_folder(tmp_path, "broken", BROKEN_MODEL), "broken", "1")
    second = ferry(*sync, "--json", ok=False)
    changes = {m["model"]: (m["change"], m["error"]) for m in second.json()["models"]}
    assert changes["scale_1"] == ("unchanged", "")  # not reloaded: its folder is what it was
    assert changes["broken_1"][0] == "failed" and "boom: this model cannot start" in changes["broken_1"][1]
    assert "1 endpoint(s) not served by Triton: broken/1" in second.err
    assert triton.model_ready("scale_1") and not triton.model_ready("broken_1")
    assert infer(triton, "scale_1", [1.0, 1.0]) == [2.0, 2.0]

    ferry("--id", sid, "model", "remove", "--endpoint", "scale/1")
    ferry("--id", sid, "model", "remove", "--endpoint", "broken/1")
    assert {m["change"] for m in ferry(*sync, "--json").json()["models"]} == {"unloaded"}
    assert sorted(p.name for p in repository.iterdir()) == ["handmade"]  # a folder ferry did not write stays
    assert (handmade / "config.pbtxt").exists()


def test_sync_says_when_triton_is_not_there(ferry_sqlite: Ferry, tmp_path: Path):
    sid = ferry_sqlite.service()
    url = f"127.0.0.1:{free_port()}"
    failed = ferry_sqlite(
        "--id", sid, "triton", "sync", "--model-repository", str(tmp_path), "--triton-url", url, ok=False
    )
    assert f"Triton at {url} is not reachable: start tritonserver --model-repository {tmp_path}" in failed.err


class Lines:
    """A subprocess's stdout, read in a thread so a test can wait for one line with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        for line in proc.stdout or []:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout} s; got:\n" + "\n".join(self.seen))


def test_watch_follows_revisions_and_reports_a_broken_model_for_its_endpoint_only(
    ferry_sqlite: Ferry, triton: Triton, repository: Path, tmp_path: Path
):
    ferry = ferry_sqlite
    sid = service_with_triton(ferry, triton)  # no --triton-url: gRPC to the service's triton_grpc_server
    add_endpoint(ferry, sid, model_folder(tmp_path, "doubler", SCALE_MODEL, 2.0), "scale", "1")
    command = [FERRY_BIN, "--id", sid, "triton", "sync", "--model-repository", str(repository), "--watch"]
    proc = subprocess.Popen(
        [*command, "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ
    )
    lines = Lines(proc)
    try:
        assert "(gRPC)" in lines.wait_for(f"with Triton at grpc://{triton.grpc_address}")
        lines.wait_for("endpoint scale/1 -> Triton model scale_1: loaded")
        assert triton.model_ready("scale_1")

        add_endpoint(ferry, sid, model_folder(tmp_path, "tripler", SCALE_MODEL, 3.0), "scale", "2")
        lines.wait_for("endpoint scale/2 -> Triton model scale_2: loaded")
        assert infer(triton, "scale_2", [1.0, 2.0]) == [3.0, 6.0] and triton.model_ready("scale_1")

        ferry("--id", sid, "model", "remove", "--endpoint", "scale/1")
        lines.wait_for("endpoint scale/1 -> Triton model scale_1: unloaded")
        assert not (repository / "scale_1").exists()
        triton.wait_for(lambda: not triton.model_ready("scale_1"), 30, "scale_1 unloaded")

        add_endpoint(ferry, sid, model_folder(tmp_path, "broken", BROKEN_MODEL), "broken", "1")
        assert "boom: this model cannot start" in lines.wait_for("Triton model broken_1: failed")
        assert triton.model_ready("scale_2") and infer(triton, "scale_2", [1.0, 1.0]) == [3.0, 3.0]

        (instance,) = ferry("--id", sid, "status", "--json").json()["instances"]
        assert instance["host"].endswith("(triton sync)")
        endpoints = instance["state"]["endpoints"]
        assert endpoints["scale/2"] == {"state": "ready", "triton_model": "scale_2"}
        assert endpoints["broken/1"]["state"] == "failed" and "boom" in endpoints["broken/1"]["error"]
        assert "scale/1" not in endpoints
    finally:
        proc.send_signal(signal.SIGINT)
        returncode = proc.wait(timeout=30)
    assert returncode == 0, proc.stderr.read() if proc.stderr else ""
    lines.wait_for("stopped", 10)  # stdout belongs to the Lines thread: read it there, not with communicate()
    assert ferry("--id", sid, "status", "--json").json()["instances"] == []  # deregistered on the way out
