"""The blocking path of an endpoint version: ``send_request`` from user code in a thread.

A mixin of ``EndpointRuntime``: the pipeline runs in the calling thread; async hooks, async engines and
the batcher run on the server's event loop, waited for here. Every count is recorded on the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ferry.engines import StatsFn
from ferry.errors import FerryError, NotReady
from ferry.serving.request.crossing import on_loop
from ferry.serving.request.drain import Retired
from ferry.serving.usercode.userclass import Hook

if TYPE_CHECKING:
    from ferry.engines import Engine
    from ferry.errors import UserCodeError
    from ferry.metrics.custom import CustomStats
    from ferry.serving.batching.batcher import DynamicBatcher
    from ferry.serving.usercode.userclass import UserCode


class BlockingPath:
    """``EndpointRuntime.run_blocking`` and its helpers (the attributes and methods it uses are the runtime's)."""

    custom: CustomStats | None
    user: UserCode
    engine: Engine
    batcher: DynamicBatcher | None
    closed: bool
    errors: int

    if TYPE_CHECKING:  # the runtime's methods (``pipeline``, ``drain``): declared for the checker, never shadowing

        def _enter(self) -> None: ...

        def _leave(self) -> None: ...

        def _count(
            self, code: int, seconds: float, custom: CustomStats | None, collected: list[Any] | None
        ) -> None: ...

        def _stage_times(self, times: list[float]) -> None: ...

        def _call_sync(self, stage: str, hook: Hook, data: Any, state: dict[str, Any], collect: StatsFn) -> Any: ...

        def _user_error(self, stage: str, exc: Exception) -> UserCodeError: ...

        def _engine_error(self, exc: Exception) -> FerryError: ...

        def _unloaded(self) -> NotReady: ...

    def run_blocking(self, body: Any, loop: asyncio.AbstractEventLoop | None) -> Any:
        """The pipeline in the calling thread (blocking send_request); async parts and the batcher run on ``loop``.

        Sync stages run right here, never in the shared pool: a pool full of callers waiting for their
        callees' stages could never drain.
        """
        started, custom = perf_counter(), self.custom
        times: list[float] = []
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

    def _count_blocking(
        self, code: int, seconds: float, times: list[float], custom: CustomStats | None, collected: list[Any] | None
    ) -> None:
        self._stage_times(times)
        self._count(code, seconds, custom, collected)

    def _run_blocking(self, body: Any, loop: Any, collect: StatsFn, times: list[float]) -> Any:
        self._enter()
        try:
            started = perf_counter()
            state: dict[str, Any] = {}
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

    def _blocking_hook(
        self, stage: str, hook: Hook, loop: Any, data: Any, state: dict[str, Any], collect: StatsFn
    ) -> Any:
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

    def _blocking_model(self, data: Any, state: dict[str, Any], loop: Any, collect: StatsFn) -> Any:
        try:
            batcher = self.batcher
            if batcher is not None and loop is not None:  # batcher.engine: the runtime's engine, as a TensorEngine
                return batcher.engine.unwrap(on_loop(batcher.submit(batcher.engine.prepare(data)), loop))
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
