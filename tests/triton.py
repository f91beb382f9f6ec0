"""A real `tritonserver` for tests (the nvidia-pytriton wheel's, CPU, Python backend), on free ports."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.process import ChildServer, missing

TRITON_HOME = Path(os.environ.get("FERRY_TRITON_HOME", Path.home() / ".cache" / "ferry" / "triton"))
"""What scripts/triton_setup.sh builds (scripts/test.sh runs it): venv/ with tritonserver, pylib/ for model.py."""

MODEL_PY_HEADER = """
import os, sys
# The backend stub's Python ignores PYTHONPATH: take the model-side libraries from it here.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
"""
"""The first lines of every Python-backend model.py a test writes (see scripts/triton_setup.sh)."""


class TritonError(AssertionError):
    """tritonserver did not start or reach a state in time; the message carries its log."""


def server_dir() -> Path:
    """site-packages/pytriton/tritonserver of the set-up venv; skips where it is missing (fails under CI)."""
    found = sorted(glob.glob(str(TRITON_HOME / "venv/lib/python3*/site-packages/pytriton/tritonserver")))
    if not found or not (Path(found[0]) / "backends/python/triton_python_backend_stub").exists():
        missing(f"no tritonserver in {TRITON_HOME}: run `bash scripts/triton_setup.sh` (scripts/test.sh does)")
    return Path(found[0])


class Triton(ChildServer):
    """`tritonserver` over ``repository`` with HTTP and gRPC on free 127.0.0.1 ports; a context manager.

    ``explicit``: --model-control-mode=explicit (nothing loads until asked, as `ferry triton sync` drives it).
    """

    name = "tritonserver"
    error = TritonError
    log_tail = 8000

    def __init__(self, repository: Path, *, explicit: bool = False) -> None:
        self.repository = Path(repository)
        self.explicit = explicit
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        self.log_path = self.repository.parent / f"tritonserver-{self.http_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def _wait_up(self) -> None:
        self.wait_for(self._live, 60, "/v2/health/live")
        if not self.explicit:
            self.wait_for(self._ready, 120, "/v2/health/ready (every model loaded)")

    def _start(self) -> None:
        root = server_dir()
        command = [
            str(root / "bin/tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={root / 'backends'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=5",
        ]
        if self.explicit:
            command.append("--model-control-mode=explicit")
        env = {**os.environ, "PYTHONPATH": str(TRITON_HOME / "pylib")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )

    def _live(self) -> bool:
        return self.client.get("/v2/health/live").status_code == 200

    def _ready(self) -> bool:
        return self.client.get("/v2/health/ready").status_code == 200

    def model_ready(self, name: str, version: str = "") -> bool:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
        return self.client.get(path).status_code == 200

    def index(self) -> list[dict]:
        """The repository index (explicit mode): every model folder with its state."""
        return self.client.post("/v2/repository/index", json={}).json()

    def stop(self) -> None:
        """SIGTERM to its process group; the Python backend needs 2-3 s to remove its shared memory."""
        self.client.close()  # an open keep-alive connection holds the shutdown for --exit-timeout-secs
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # the server, not its group: it stops its backend stubs itself
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def python_model(repository: Path, name: str, config: str, model_py: str, files: dict[str, Path] | None = None) -> Path:
    """Write ``<repository>/<name>/config.pbtxt`` and ``1/model.py`` (after MODEL_PY_HEADER), link ``files`` in."""
    folder = repository / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    (repository / name / "config.pbtxt").write_text(config)
    (folder / "model.py").write_text(MODEL_PY_HEADER + model_py)
    for target, source in (files or {}).items():
        shutil.copyfile(source, folder / target)
    return repository / name
