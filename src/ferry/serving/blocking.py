"""The blocking path of an endpoint version: ``send_request`` from user code in a thread.

A mixin of ``EndpointRuntime``: the pipeline runs in the calling thread; async hooks, async engines and
the batcher run on the server's event loop, waited for here. Every count is recorded on the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from time import perf_counter
from typing import Any

from ferry.engines import StatsFn
from ferry.errors import FerryError, NotReady
from ferry.serving.crossing import on_loop
from ferry.serving.drain import Retired
from ferry.serving.userclass import Hook


class BlockingPath:
    """``EndpointRuntime.run_blocking`` and its helpers (the attributes and methods it uses are the runtime's)."""

    def run_blocking(self, body: Any, loop: asyncio.AbstractEventLoop | None) -> Any:
        """The pipeline in the calling thread (blocking send_request); async parts and the batcher run on ``loop``.

        Sync stages run right here, never in the shared pool: a pool full of callers waiting for their
        callees' stages could never drain.
        """
        started, custom, times = perf_counter(), self.custom, []
        collected = custom.sample() if custom is not None else None
        code: int | None = 200
        try:
            return self._run_blocking(body, loop, None if collected is None else collected.append, times)
        except Retired:
            code = None
            raise
        except BaseException as exc:
            code = getattr(exc, "status_code", 500)
            raise
        finally:
            if code is not None:  # recorded on the loop's thread, where every other record happens
                seconds = perf_counter() - started
                _on_loop(loop, self._count_blocking, code, seconds, times, custom, collected)

    def _count_blocking(self, code: int, seconds: float, times: list, custom: Any, collected: list | None) -> None:
        self._stage_times(times)
        self._count(code, seconds, custom, collected)

    def _run_blocking(self, body: Any, loop: Any, collect: StatsFn, times: list[float]) -> Any:
        self._enter()
        try:
            started, state = perf_counter(), {}
            data = self._blocking_hook("preprocess", self.user.preprocess, loop, body, state, collect)
            times.append((pre_done := perf_counter()) - started)
            data = self._blocking_model(data, state, loop, collect)
            times.append((model_done := perf_counter()) - pre_done)
            answer = self._blocking_hook("postprocess", self.user.postprocess, loop, data, state, collect)
            times.append(perf_counter() - model_done)
            if self.closed:
                raise self._unloaded()
            return answer
        except Exception as exc:
            self.errors += 1
            if self.closed and not isinstance(exc, NotReady):
                raise self._unloaded() from exc
            raise
        finally:
            self._leave()

    def _blocking_hook(self, stage: str, hook: Hook, loop: Any, data: Any, state: dict, collect: StatsFn) -> Any:
        if hook.fn is None:
            return data
        if not hook.is_async:
            return self._call_sync(stage, hook, data, state, collect)
        try:
            return on_loop(hook.fn(data, state, collect), loop)
        except FerryError:
            raise
        except Exception as exc:
            raise self._user_error(stage, exc) from exc

    def _blocking_model(self, data: Any, state: dict, loop: Any, collect: StatsFn) -> Any:
        try:
            if self.batcher is not None and loop is not None:
                return self.engine.unwrap(on_loop(self.batcher.submit(self.engine.prepare(data)), loop))
            if self.engine.is_async:
                return on_loop(self.engine.run(data, state, collect), loop)
            return self.engine.run(data, state, collect)
        except FerryError:
            raise
        except Exception as exc:
            raise self._engine_error(exc) from exc


def _on_loop(loop: asyncio.AbstractEventLoop | None, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn`` on ``loop``'s thread (None: this thread is the loop's, or there is no loop)."""
    if loop is None:
        fn(*args)
        return
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the server is stopping
        loop.call_soon_threadsafe(fn, *args)
