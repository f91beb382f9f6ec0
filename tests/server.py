"""A real `ferry serve` subprocess on a free port: start, wait until ready, stop with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx

from tests.conftest import FERRY_BIN, free_port
from tests.process import wait_until


class Server:
    """One `ferry serve` process; its log goes to a file the failing test can show."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None, command: str = "serve") -> None:
        """``ferry COMMAND --port <free port> ARGS`` (``command``: serve, or console)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the life of the process
        env = {"FERRY_POLL_INTERVAL": "0.2", "FERRY_HEARTBEAT_INTERVAL": "0.3", **os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [FERRY_BIN, command, "--port", str(self.port), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self, timeout: float = 30) -> None:
        self.wait_for(lambda: self.client.get("/health/ready").status_code == 200, timeout, "ready")

    def wait_for(self, check, timeout: float = 20, what: str = "condition") -> float:
        """Poll ``check`` until it is true; returns the seconds it took."""
        return wait_until(self.proc, "ferry serve", check, timeout, what, self.log)

    def post(self, path: str, body=None, **kwargs) -> httpx.Response:
        return self.client.post(path, json=body, **kwargs)

    def serve(self, endpoint: str, body=None) -> httpx.Response:
        return self.post(f"/serve/{endpoint}", body)

    def wait_endpoint(self, endpoint: str, body=None, timeout: float = 20) -> object:
        """POST until ``endpoint`` answers 200 (it appears once its revision loads); its JSON answer."""
        answers: list[httpx.Response] = []

        def answered() -> bool:
            answers.append(self.serve(endpoint, body))
            status, text = answers[-1].status_code, answers[-1].text
            if status not in (200, 404, 503) or "failed to load" in text:
                raise AssertionError(f"/serve/{endpoint} answered {status}: {text}\n{self.log()}")
            return status == 200

        self.wait_for(answered, timeout, f"/serve/{endpoint} answering 200")
        return answers[-1].json()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.client.close()
        self._log.close()
        return self.proc.returncode
