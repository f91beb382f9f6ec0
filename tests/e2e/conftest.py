"""Fixtures for end-to-end tests: one throwaway FERRY_HOME, one service and one real `ferry serve` per module."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FERRY_BIN, Ferry, free_port

STORE_VARIABLES = ("FERRY_STORE", "FERRY_ARTIFACT_ROOT", "FERRY_SERVICE", "FERRY_CACHE_DIR")


@pytest.fixture(scope="module")
def e2e_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """What `ferry_home` does, for a whole module: the server outlives a single test."""
    home = tmp_path_factory.mktemp("e2e") / "ferry-home"
    with pytest.MonkeyPatch.context() as mp:
        for name in STORE_VARIABLES:
            mp.delenv(name, raising=False)
        mp.setenv("FERRY_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def e2e_ferry(e2e_home: Path) -> Ferry:
    """The real `ferry` command against the module's store."""
    return Ferry(e2e_home.parent)


@pytest.fixture(scope="module")
def e2e_service(e2e_ferry: Ferry) -> str:
    """A service named as in every ClearML-Serving example; its id."""
    return e2e_ferry.service("serving example")


class ExampleServer:
    """A `ferry serve` subprocess and an HTTP client pointed at it."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log
        self.client = httpx.Client(base_url=url, timeout=10.0)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def post(self, endpoint: str, body: object) -> httpx.Response:
        return self.client.post(f"/serve/{endpoint}", json=body)

    def wait_for(self, endpoint: str, body: object, timeout: float = 20.0) -> dict:
        """POST ``body`` until ``endpoint`` answers 200 (it appears once the server loads the revision)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"ferry serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            response = self.post(endpoint, body)
            if response.status_code == 200:
                return response.json()
            if response.status_code not in (404, 503) or "failed to load" in response.text:
                pytest.fail(f"/serve/{endpoint} answered {response.status_code}: {response.text}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"/serve/{endpoint} still answers {response.status_code} after {timeout:.0f} s: "
                    f"{response.text}\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def example_server(e2e_home: Path, e2e_service: str) -> Iterator[ExampleServer]:
    """`ferry serve --id <service> --port <free port>`, live once /health/live answers."""
    port = free_port()
    log = e2e_home.parent / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [FERRY_BIN, "--id", e2e_service, "serve", "--port", str(port)],
            cwd=e2e_home.parent,
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = ExampleServer(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ferry serve exited with {proc.returncode}:\n{running.log_tail()}")
            try:
                if running.client.get("/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ferry serve did not answer /health/live within 20 s:\n{running.log_tail()}")
            time.sleep(0.2)
        yield running
    finally:
        running.stop()
