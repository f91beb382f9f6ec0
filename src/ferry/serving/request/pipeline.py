"""EndpointRuntime: one loaded endpoint version: its stages (``stages.StageRunner``), its admission and drain
(``drain.Drain``), and the count of every request on its meter, under its request timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar, cast

import numpy as np

from ferry.control.aux_config import queue_limits
from ferry.control.engine_names import GENERATIVE
from ferry.control.spec import EndpointSpec
from ferry.engines import Engine, StatsFn
from ferry.engines.tensor import Feeds
from ferry.errors import NotFound, NotReady, Timeout
from ferry.metrics.collectors import NULL_METER, EndpointMeter, NullMeter
from ferry.metrics.custom import CustomStats
from ferry.serving.batching.batcher import DynamicBatcher
from ferry.serving.request.crossing import calls_other_endpoints, marking
from ferry.serving.request.deadline import Deadline
from ferry.serving.request.drain import Drain, Retired
from ferry.serving.request.inline import CostMeter
from ferry.serving.request.stages import StageRunner
from ferry.serving.revisions.assembly import inline_budget, load_parts, release
from ferry.serving.usercode.userclass import UserCode
from ferry.streams import Stream, status_of

T = TypeVar("T")


class EndpointRuntime:
    """A loaded endpoint version. Built off the request path; shared by every request it serves."""

    def __init__(self, spec: EndpointSpec, user: UserCode, engine: Engine, batcher: DynamicBatcher | None = None):
        self.spec = spec
        self.user = user
        self.engine = engine
        self.batcher = batcher
        self.errors = 0
        self.closed = False
        pre, post = user.preprocess, user.postprocess
        self.all_sync = batcher is None and not (pre.is_async or post.is_async or engine.is_async)
        budget = inline_budget(spec)
        self._cost = {stage: CostMeter(budget) for stage in ("pipeline", "preprocess", "model", "postprocess")}
        limits = queue_limits(spec.engine, spec.aux_config)
        self.drain = Drain(spec.key, limits.max_queue_size, self._overloaded)
        self.runner = StageRunner(spec, user, engine, batcher, self._cost, self.drain.track)
        self.timeout_s = limits.request_timeout_s
        """This endpoint's request timeout; None: the service default."""
        self.generates = spec.engine in GENERATIVE
        """An LLM's version: OpenAI bodies in, answers or streams of chunks out (the OpenAI routes serve it)."""
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

    @property
    def inflight(self) -> int:
        return self.drain.inflight

    @property
    def requests(self) -> int:
        return self.drain.requests

    @requests.setter
    def requests(self, value: int) -> None:  # the warmup's are not counted (RevisionSwap.warm)
        self.drain.requests = value

    def envelope(self, endpoint: str, body: Any, route: str | None) -> Any:
        """What an LLM version's hooks get: ClearML's ``{"request": <the OpenAI body>, "route": ...}``; NotFound for a
        version that is not an LLM's (the OpenAI routes, and send_request to them, name only LLM endpoints)."""
        if not self.generates:
            raise NotFound(
                f"model {endpoint!r} is not an LLM endpoint (its engine is {self.spec.engine}): the OpenAI routes "
                "serve endpoints added with --engine llm or vllm"
            )
        if isinstance(body, dict) and "request" in body and route is None:
            return body  # already an envelope (a send_request from another endpoint's hooks)
        if route is None and isinstance(body, dict) and "model" not in body:
            body = {**body, "model": endpoint}  # /serve/<endpoint>: the endpoint is the model
        return {"request": body, "raw_request": None, "route": route}

    def _overloaded(self) -> None:
        self.meter.overloaded.inc()

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
        state: dict[str, Any] = {}
        times: list[float] = []
        runner = self.runner
        if self.all_sync:  # the whole run right here when cheap, else in one pool hop
            work = runner.sync("pipeline", runner.run_here, pool, body, state, collect, times)
        else:
            work = runner.run(body, state, collect, pool, times)
        return self._counted(work, timeout_s, inline, custom, collected, times)

    async def _counted(
        self,
        work: Coroutine[Any, Any, T],
        timeout_s: float | None,
        inline: bool,
        custom: CustomStats | None = None,
        collected: list[Any] | None = None,
        times: list[float] | None = None,
    ) -> T:
        """``work`` counted in flight, under the request timeout unless it runs inline (nothing to time out),
        then its answer counted on the meter with its status code.

        Guard, timeout and count share this one coroutine: every coroutine between the app and the model is
        created, entered and resumed on every request.
        """
        started = perf_counter()
        try:
            self.drain.enter()
        except BaseException as exc:
            work.close()  # never started
            self._failed(exc, started, custom, collected)
            raise
        limit = self.timeout_s or timeout_s
        deadline = None if limit is None or inline else Deadline(limit)
        streaming = False
        try:
            answer = await work
            if self.closed:  # unloaded under it (drain timeout): what it computed may rest on freed state
                raise self._unloaded()
            if type(answer) is Stream:  # counted, and held in flight, until its last chunk
                streaming, stream = True, cast(Stream, answer)
                stream.idle_timeout_s = limit
                stream.at_end(partial(self._stream_ended, started, custom, collected))
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
            error = self._failure(exc)
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
            if not streaming:
                self.drain.leave()
            if times:  # the stages' seconds, as far as they got
                self._stage_times(times)
        if not streaming:
            self._count(200, perf_counter() - started, custom, collected)
        return answer

    def _stream_ended(
        self, started: float, custom: CustomStats | None, collected: list[Any] | None, error: BaseException | None
    ) -> None:
        """A streamed answer's last chunk went out (or it failed, or its client left): now it is counted."""
        self.drain.leave()
        if error is not None and not isinstance(error, asyncio.CancelledError):
            self.errors += 1
        self._count(status_of(error), perf_counter() - started, custom, collected)

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
        """Stage times (preprocess, model, postprocess, as far as it got) on the meter, on the loop's thread."""
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
        feeds, started = prepare(), perf_counter()  # prepare's refusal (400) is counted like any answer
        outputs = await self.runner.tensors(feeds, pool)
        self.meter.model.observe(perf_counter() - started)
        return outputs

    async def run_model(self, data: Any, state: dict[str, Any], collect: StatsFn, pool: Executor) -> Any:
        """Only the model stage, batched (a model replica under ``ferry serve --ray``: the ingress runs pre/post)."""
        return await self.runner.model(data, state, collect, pool)

    async def run_model_tensors(self, feeds: Feeds, pool: Executor) -> list[np.ndarray]:
        """Only the model on checked arrays, batched (the V2 protocol on a ``ferry serve --ray`` model replica)."""
        return await self._tensors(lambda: feeds, pool)

    def run_blocking(self, body: Any, loop: asyncio.AbstractEventLoop | None) -> Any:
        """The stages in the calling thread (a blocking ``send_request``); async parts and the batcher on ``loop``.

        Counted like ``run``, on the loop's thread where every other record happens.
        """
        started, custom = perf_counter(), self.custom
        times: list[float] = []
        collected = custom.sample() if custom is not None else None
        collect = None if collected is None else collected.append
        code: int | None = 200
        try:
            self.drain.enter()
            try:
                answer = self.runner.run_blocking(body, {}, collect, loop, times)
                if self.closed:
                    raise self._unloaded()
                return answer
            except Exception as exc:
                error = self._failure(exc)
                if error is not exc:
                    raise error from exc
                raise
            finally:
                self.drain.leave()
        except Retired:
            code = None  # resolved again: not an answer
            raise
        except BaseException as exc:  # an admission refused (503) is counted too, as ``run`` counts it
            code = getattr(exc, "status_code", 500)
            raise
        finally:
            if code is not None:
                _on_loop(loop, self._count_blocking, code, perf_counter() - started, times, custom, collected)

    def _count_blocking(
        self, code: int, seconds: float, times: list[float], custom: CustomStats | None, collected: list[Any] | None
    ) -> None:
        self._stage_times(times)
        self._count(code, seconds, custom, collected)

    def _failure(self, exc: Exception) -> Exception:
        """Count a failed request on this version; what to raise for it (``exc``, or 503 to retry when the version
        was unloaded under it: what it computed may rest on freed state)."""
        self.errors += 1
        return self._unloaded() if self.closed and not isinstance(exc, NotReady) else exc

    def _unloaded(self) -> NotReady:
        """What a request still running when its runtime was unloaded (drain timeout) gets, whatever broke."""
        return NotReady(f"endpoint {self.key} was unloaded while this request ran; retry", retry_after=1.0)

    # lifetime -----------------------------------------------------------------------------------

    def forbid_inline(self) -> None:
        """This version's code calls other endpoints (send_request): none of it may run on the event loop."""
        for meter in self._cost.values():
            meter.forbid_inline()

    def retire(self, timeout: float = 30.0) -> bool:
        """Take no new requests, wait for those in flight, then close; False when some were still running.

        Requests that still run at the timeout are answered 503 with Retry-After once the runtime closes.
        """
        drained = self.drain.wait(timeout)
        self.close()
        return drained

    def close(self) -> None:
        """Call the user's ``unload`` and release the engine and batcher; errors are reported, not raised."""
        self.drain.retiring = self.closed = True
        release(self.spec, self.user, self.engine, self.batcher)


def _on_loop(loop: asyncio.AbstractEventLoop | None, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn`` on ``loop``'s thread (None: this thread is the loop's, or there is no loop)."""
    if loop is None:
        fn(*args)
        return
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the server is stopping
        loop.call_soon_threadsafe(fn, *args)
