"""Server subprocesses the tests start: poll a check, fail with the server's log if it exits or stalls."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
from typing_extensions import Self


def wait_until(
    proc: subprocess.Popen | None,
    name: str,
    check: Callable[[], bool],
    timeout: float,
    what: str,
    log: Callable[[], str],
    error: type[AssertionError] = AssertionError,
    every: float = 0.05,
) -> float:
    """Poll ``check`` until it is true (a refused connection counts as not yet); the seconds it took.

    Raises ``error`` with the server's log when ``proc`` exits meanwhile or ``timeout`` passes.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise error(f"{name} exited with {proc.returncode}:\n{log()}")
        try:
            if check():
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(every)
    raise error(f"{name}: {what} not reached in {timeout} s:\n{log()}")


def missing(message: str) -> NoReturn:
    """A server the test needs is not installed: skip here, fail under CI (scripts/test.sh installs it)."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class ChildServer:
    """A server subprocess used as a context manager: started, waited for until up (stopped again if that
    fails), stopped at the end. Subclasses start it (``_start``), say when it is up (``_wait_up``) and stop it."""

    name = "server"
    error: type[AssertionError] = AssertionError
    log_tail = 5000
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    def __enter__(self) -> Self:
        try:
            self._start()
            self._wait_up()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``check`` until it is true; the seconds it took. Fails with the log if the server exits."""
        return wait_until(self.proc, self.name, check, timeout, what, self.log, self.error, every=0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-self.log_tail :] if self.log_path.exists() else ""

    def _start(self) -> None:
        raise NotImplementedError

    def _wait_up(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError
