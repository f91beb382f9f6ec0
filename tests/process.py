"""Waiting on a server subprocess the tests started: poll a check, fail with its log if it exits or stalls."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx


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
