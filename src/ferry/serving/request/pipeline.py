"""EndpointRuntime: one endpoint version's Preprocess + Engine, run as pre -> engine -> post."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar, cast

import numpy as np

from ferry.control.aux_config import queue_limits
from ferry.control.spec import EndpointSpec
from ferry.engines import Engine, StatsFn
from ferry.engines.tensor import AsyncTensorEngine, Feeds, TensorEngine
from ferry.errors import EngineError, FerryError, NotReady, Timeout, UserCodeError
from ferry.metrics.collectors import NULL_METER, EndpointMeter, NullMeter
from ferry.metrics.custom import CustomStats
from ferry.serving.batching.batcher import DynamicBatcher
from ferry.serving.request.blocking import BlockingPath
from ferry.serving.request.crossing import calls_other_endpoints, marking
from ferry.serving.request.deadline import Deadline
from ferry.serving.request.drain import Drain, Retired
from ferry.serving.request.inline import CostMeter
from ferry.serving.revisions.assembly import inline_budget, load_parts, release
from ferry.serving.usercode.userclass import Hook, UserCode

T = TypeVar("T")


class EndpointRuntime(BlockingPath, Drain):
    """A loaded endpoint version. Built off the request path; shared by every request it serves."""

    def __init__(self, spec: EndpointSpec, user: UserCode, engine: Engine, batcher: DynamicBatcher | None = None):
        self.spec = spec
        self.user = user
        self.engine = engine
        self.batcher = batcher
        self.inflight = 0
        self.requests = 0
        self.errors = 0
        self.retiring = False
        """Set when the reconciler retires this version: requests that resolved it resolve again."""
        self.closed = False
        self._idle = threading.Condition()
        self._threads = 0
        """Sync stages running in the pool, counted until they end (even after their request timed out)."""
        pre, post = user.preprocess, user.postprocess
        self.all_sync = batcher is None and not (pre.is_async or post.is_async or engine.is_async)
        budget = inline_budget(spec)
        self._cost = {stage: CostMeter(budget) for stage in ("pipeline", "preprocess", "model", "postprocess")}
        limits = queue_limits(spec.engine, spec.aux_config)
        self.max_queue_size = limits.max_queue_size
        """Requests this version holds (running or waiting) before it answers 503 (aux ``max_queue_size``)."""
        self.timeout_s = limits.request_timeout_s
        """This endpoint's request timeout; None: the service default."""
        self.meter: EndpointMeter | NullMeter = NULL_METER
        """Its Prometheus series, attached once it is warm (warmup requests are not counted)."""
        self.custom: CustomStats | None = None
        """Its custom statistics (``ferry metrics add``), replaced when the metric config changes."""
        if calls_other_endpoints(user):
            self.forbid_inline()

    @classmethod
    def build(
        cls,
        spec: EndpointSpec,
        model_path: Path | None,
        code_path: Path | None,
        send_request: Callable[..., Any] | None,
    ) -> EndpointRuntime:
        """Import the user's code, call its ``load``, load the engine (``assembly``). Blocking: run it off the loop."""
        built: list[EndpointRuntime] = []  # for send_request: which version calls it (``crossing.marking``)
        parts = load_parts(spec, model_path, code_path, marking(send_request, built))
        try:
            built.append(cls(spec, *parts))
        except BaseException:
            release(spec, *parts)
            raise
        return built[0]

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this version has: the model, and the hooks its Preprocess class defines."""
        pre, post = self.user.preprocess.fn is not None, self.user.postprocess.fn is not None
        return ("preprocess",) * pre + ("model",) + ("postprocess",) * post

    def attach(self, meter: EndpointMeter | NullMeter) -> None:
        """Record this version's requests (and batches) on ``meter`` from now on."""
        self.meter = meter
        if self.batcher is not None:
            self.batcher.meter = meter

    # running ------------------------------------------------------------------------------------

    def run(self, body: Any, pool: Executor, timeout_s: float | None = None) -> Coroutine[Any, Any, Any]:
        """pre -> engine -> post for one request; cheap sync code runs inline, costly sync code in ``pool``.

        Raises ``Retired`` when the reconciler has begun to retire this runtime: resolve again. A plain
        function returning the coroutine to await: one coroutine fewer on every request.
        """
        custom = self.custom
        collected = custom.sample() if custom is not None else None
        collect = None if collected is None else collected.append
        inline = self.all_sync and self._cost["pipeline"].cheap
        return self._counted(self._stages(body, collect, pool), timeout_s, inline, custom, collected)

    async def _counted(
        self,
        work: Coroutine[Any, Any, T],
        timeout_s: float | None,
        inline: bool,
        custom: CustomStats | None = None,
        collected: list[Any] | None = None,
    ) -> T:
        """``work`` counted in flight, under the request timeout unless it runs inline (nothing to time out),
        then its answer counted on the meter with its status code.

        Guard, timeout and count share this one coroutine: every coroutine between the app and the model is
        created, entered and resumed on every request.
        """
        started = perf_counter()
        try:
            self._enter()
        except BaseException as exc:
            work.close()  # never started
            self._failed(exc, started, custom, collected)
            raise
        limit = self.timeout_s or timeout_s
        deadline = None if limit is None or inline else Deadline(limit)
        try:
            answer = await work
            if self.closed:  # unloaded under it (drain timeout): what it computed may rest on freed state
                raise self._unloaded()
        except asyncio.CancelledError:
            if deadline is None or not deadline.expired():
                raise  # the caller went away: no answer to count
            self.errors += 1
            self.meter.timed_out.inc()
            error: Exception = Timeout(
                f"endpoint {self.key}: no answer within {limit:g} s (aux config request_timeout_ms)"
            )
            self._failed(error, started, custom, collected)
            raise error from None
        except Exception as exc:
            self.errors += 1
            error = self._unloaded() if self.closed and not isinstance(exc, NotReady) else exc
            self._failed(error, started, custom, collected)
            if error is not exc:
                raise error from exc
            raise
        except BaseException as exc:
            self._failed(exc, started, custom, collected)
            raise
        finally:
            if deadline is not None:
                deadline.disarm()
            self._leave()
        self._count(200, perf_counter() - started, custom, collected)
        return answer

    def _failed(
        self, exc: BaseException, started: float, custom: CustomStats | None, collected: list[Any] | None
    ) -> None:
        """Count a request that ended in ``exc`` by its status code (Retired: resolved again, not an answer)."""
        if not isinstance(exc, Retired):
            self._count(getattr(exc, "status_code", 500), perf_counter() - started, custom, collected)

    def _count(self, code: int, seconds: float, custom: CustomStats | None, collected: list[Any] | None) -> None:
        """One answered request on this version's meter; on the event loop's thread, as every record."""
        self.meter.request(code, seconds)
        if collected and custom is not None:  # collected comes from custom.sample(): never without custom
            custom.record(collected)

    def _stage_times(self, times: list[float]) -> None:
        """Stage times measured in another thread (preprocess, model, postprocess, as far as it got)."""
        meter = self.meter
        for recorder, seconds in zip((meter.preprocess, meter.model, meter.postprocess), times, strict=False):
            recorder.observe(seconds)

    async def run_tensors(
        self, prepare: Callable[[], Feeds], pool: Executor, timeout_s: float | None = None
    ) -> list[np.ndarray]:
        """Only the model, on the arrays ``prepare()`` checks and returns (the V2 protocol: no pre/post).

        Counted on this version's meter like ``run``; raises ``Retired`` like ``run``.
        """
        inline = self.batcher is None and not self.engine.is_async and self._cost["model"].cheap
        return await self._counted(self._tensors(prepare, pool), timeout_s, inline)

    async def _tensors(self, prepare: Callable[[], Feeds], pool: Executor) -> list[np.ndarray]:
        feeds, started = prepare(), perf_counter()
        try:
            if self.batcher is not None:
                outputs = await self.batcher.submit(feeds)
            elif self.engine.is_async:  # V2 reaches only tensor engines (``v2.signature`` refuses the others)
                outputs = await cast(AsyncTensorEngine, self.engine).run_tensors(feeds)
            else:
                outputs = await self._sync("model", cast(TensorEngine, self.engine).run_tensors, pool, feeds)
        except FerryError:
            raise
        except Exception as exc:
            raise self._engine_error(exc) from exc
        self.meter.model.observe(perf_counter() - started)
        return outputs

    async def run_model(self, data: Any, state: dict[str, Any], collect: StatsFn, pool: Executor) -> Any:
        """Only the model stage, batched (a model replica under ``ferry serve --ray``: the ingress runs pre/post)."""
        return await self._model(data, state, collect, pool)

    async def run_model_tensors(self, feeds: Feeds, pool: Executor) -> list[np.ndarray]:
        """Only the model on checked arrays, batched (the V2 protocol on a ``ferry serve --ray`` model replica)."""
        return await self._tensors(lambda: feeds, pool)

    async def _stages(self, body: Any, collect: StatsFn, pool: Executor) -> Any:
        state: dict[str, Any] = {}
        if self.all_sync:
            times: list[float] = []
            try:
                return await self._sync("pipeline", self._run_here, pool, body, state, collect, times)
            finally:
                self._stage_times(times)
        meter, started, pre, post = self.meter, perf_counter(), self.user.preprocess, self.user.postprocess
        if self._here("preprocess", pre):  # no coroutine for a hook that runs right here
            data = self._hook_here("preprocess", pre, body, state, collect)
        else:
            data = await self._hook("preprocess", pre, pool, body, state, collect)
        meter.preprocess.observe((pre_done := perf_counter()) - started)
        data = await self._model(data, state, collect, pool)
        meter.model.observe((model_done := perf_counter()) - pre_done)
        if self._here("postprocess", post):
            answer = self._hook_here("postprocess", post, data, state, collect)
        else:
            answer = await self._hook("postprocess", post, pool, data, state, collect)
        meter.postprocess.observe(perf_counter() - model_done)
        return answer

    def _here(self, stage: str, hook: Hook) -> bool:
        """Whether ``hook`` runs inline on the loop now: there is none, or it is sync code known to be cheap."""
        return hook.fn is None or (not hook.is_async and self._cost[stage].cheap)

    def _hook_here(self, stage: str, hook: Hook, data: Any, state: dict[str, Any], collect: StatsFn) -> Any:
        """``_hook`` for a hook that ``_here`` lets run inline, without a coroutine."""
        if hook.fn is None:
            return data
        try:
            return self._cost[stage].call(hook.fn, data, state, collect)
        except FerryError:
            raise
        except Exception as exc:
            raise self._user_error(stage, exc) from exc

    def _run_here(self, body: Any, state: dict[str, Any], collect: StatsFn, times: list[float]) -> Any:
        """The whole sync pipeline in this thread, without batching; appends each stage's time to ``times``."""
        started = perf_counter()
        data = self._call_sync("preprocess", self.user.preprocess, body, state, collect)
        times.append((pre_done := perf_counter()) - started)
        try:
            data = self.engine.run(data, state, collect)
        except FerryError:
            raise
        except Exception as exc:
            raise self._engine_error(exc) from exc
        times.append((model_done := perf_counter()) - pre_done)
        answer = self._call_sync("postprocess", self.user.postprocess, data, state, collect)
        times.append(perf_counter() - model_done)
        return answer

    async def _sync(self, what: str, fn: Callable[..., Any], pool: Executor, *args: Any) -> Any:
        """Run sync ``fn`` inline when it is known to be cheap (a thread hop would cost more), else in pool."""
        meter = self._cost[what]
        if meter.cheap:
            return meter.call(fn, *args)
        return await asyncio.wrap_future(self._in_thread(pool.submit(meter.call, fn, *args)))

    async def _hook(
        self, stage: str, hook: Hook, pool: Executor, data: Any, state: dict[str, Any], collect: StatsFn
    ) -> Any:
        if hook.fn is None:
            return data
        try:
            if hook.is_async:
                return await hook.fn(data, state, collect)
            return await self._sync(stage, hook.fn, pool, data, state, collect)
        except FerryError:
            raise
        except Exception as exc:
            raise self._user_error(stage, exc) from exc

    async def _model(self, data: Any, state: dict[str, Any], collect: StatsFn, pool: Executor) -> Any:
        try:
            batcher = self.batcher
            if batcher is not None:  # batcher.engine: the runtime's engine, as the TensorEngine it is
                outputs = await batcher.submit(batcher.engine.prepare(data))
                return batcher.engine.unwrap(outputs)
            if self.engine.is_async:
                return await self.engine.run(data, state, collect)
            return await self._sync("model", self.engine.run, pool, data, state, collect)
        except FerryError:
            raise
        except Exception as exc:
            raise self._engine_error(exc) from exc

    def _call_sync(self, stage: str, hook: Hook, data: Any, state: dict[str, Any], collect: StatsFn) -> Any:
        if hook.fn is None:
            return data
        try:
            return hook.fn(data, state, collect)
        except FerryError:
            raise
        except Exception as exc:
            raise self._user_error(stage, exc) from exc

    def _user_error(self, stage: str, exc: Exception) -> UserCodeError:
        return UserCodeError(
            f"endpoint {self.key}: {stage} raised {type(exc).__name__}: {exc}", endpoint=self.key, stage=stage
        )

    def _engine_error(self, exc: Exception) -> FerryError:
        if self.spec.engine in ("custom", "custom_async"):
            return self._user_error("process", exc)
        if isinstance(exc, (ValueError, TypeError, KeyError, IndexError, ArithmeticError)):
            # The model refused what preprocess produced from this request: the request is what to fix.
            return UserCodeError(
                f"endpoint {self.key}: the {self.spec.engine} model rejected its input: {type(exc).__name__}: {exc}",
                endpoint=self.key,
                stage="model",
            )
        return EngineError(
            f"endpoint {self.key}: the {self.spec.engine} engine failed: {type(exc).__name__}: {exc}",
            endpoint=self.key,
            stage="model",
        )

    def _unloaded(self) -> NotReady:
        """What a request still running when its runtime was unloaded (drain timeout) gets, whatever broke."""
        return NotReady(f"endpoint {self.key} was unloaded while this request ran; retry", retry_after=1.0)

    # lifetime -----------------------------------------------------------------------------------

    def forbid_inline(self) -> None:
        """This version's code calls other endpoints (send_request): none of it may run on the event loop."""
        for meter in self._cost.values():
            meter.forbid_inline()

    def close(self) -> None:
        """Call the user's ``unload`` and release the engine and batcher; errors are reported, not raised."""
        self.retiring = self.closed = True
        release(self.spec, self.user, self.engine, self.batcher)
