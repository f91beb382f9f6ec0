"""Crossing between the event loop and threads: waiting on the loop from a thread, timeouts, send_request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ferry.serving.usercode.userclass import UserCode


def on_loop(coroutine: Any, loop: asyncio.AbstractEventLoop | None) -> Any:
    """Run ``coroutine`` on the server's loop from another thread and wait for it."""
    if loop is None or not loop.is_running():
        return asyncio.run(coroutine)
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


timeout = getattr(asyncio, "timeout", None) or (lambda seconds: _WaitFor(seconds))


class _WaitFor:
    """``asyncio.timeout`` for Python 3.10: cancels the current task after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None  # ``async with`` runs in a task
        self._handle = asyncio.get_running_loop().call_later(self.seconds, task.cancel)

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        self._handle.cancel()
        if kind is asyncio.CancelledError and self._handle.when() <= asyncio.get_running_loop().time():
            raise asyncio.TimeoutError from exc
        return False


def calls_other_endpoints(user: UserCode) -> bool:
    """True when any method of the user's Preprocess class names ``send_request`` (decided once, at load)."""
    if user.instance is None:
        return False
    for klass in type(user.instance).__mro__[:-1]:
        for value in vars(klass).values():
            code = getattr(getattr(value, "__func__", value), "__code__", None)
            if code is not None and _names(code, "send_request"):
                return True
    return False


def _names(code: Any, name: str) -> bool:
    if name in code.co_names:
        return True
    return any(hasattr(const, "co_names") and _names(const, name) for const in code.co_consts)


def marking(send_request: Callable[..., Any] | None, built: list[Any]) -> Callable[..., Any] | None:
    """``send_request`` that, when called, keeps the calling version's code (``built[0]``) off the loop for good."""
    if send_request is None:
        return None
    if asyncio.iscoroutinefunction(send_request):
        return send_request  # awaited from async hooks, which never run inline

    def send(*args: Any, **kwargs: Any) -> Any:
        if built:
            built[0].forbid_inline()
        return send_request(*args, **kwargs)

    return send
