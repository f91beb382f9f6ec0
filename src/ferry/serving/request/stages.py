"""StageRunner: preprocess -> model -> postprocess for one endpoint version, whichever way a request came in.

One order (``STAGES``), one stage timing (a list of seconds per stage, recorded by the runtime on the loop's
thread) and one mapping of what user code or the model raises to ferry errors (``error``), for three drivers:

- ``run``: on the event loop (HTTP, V2, async ``send_request``, a Ray ingress). A sync hook or model call
  runs right there while its measured cost is cheap, else in the stage pool; an ``async def`` one is awaited;
  the model goes through the batcher when the version has one.
- ``run_here``: every stage in the calling thread (an all-sync version, run inline or in one pool hop).
- ``run_blocking``: a blocking ``send_request`` in a user's thread: sync stages here, async ones and the
  batcher on the server's loop.

``model`` and ``tensors`` run the model stage alone (a Ray model replica; the V2 protocol's arrays). A
streamed model result (an LLM's token deltas) is meant to pass as the model stage's value, with postprocess
applied per chunk, without a fourth driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, Future
from time import perf_counter
from typing import Any, cast

import numpy as np

from ferry.control.spec import EndpointSpec
from ferry.engines import Engine, StatsFn
from ferry.engines.tensor import AsyncTensorEngine, Feeds, TensorEngine
from ferry.errors import EngineError, FerryError, UserCodeError
from ferry.serving.batching.batcher import DynamicBatcher
from ferry.serving.request.crossing import on_loop
from ferry.serving.request.inline import CostMeter
from ferry.serving.usercode.userclass import Hook, UserCode
from ferry.streams import Stream

STAGES = ("preprocess", "model", "postprocess")
MODEL_REFUSALS = (ValueError, TypeError, KeyError, IndexError, ArithmeticError)
"""What a model raises on an input it cannot take: the request is what to fix (422), not the engine."""


class StageRunner:
    """The stages of one endpoint version and the ways to run them (see the module's text)."""

    def __init__(
        self,
        spec: EndpointSpec,
        user: UserCode,
        engine: Engine,
        batcher: DynamicBatcher | None,
        cost: dict[str, CostMeter],
        track: Callable[[Future[Any]], Future[Any]],
    ) -> None:
        self.spec = spec
        self.engine = engine
        self.batcher = batcher
        self.cost = cost
        """Per stage (and "pipeline", a whole all-sync run): whether its sync code may run on the loop."""
        self.track = track
        """Counts a pool thread until it ends (the drain waits for it, even after its request timed out)."""
        self.hooks: dict[str, Hook] = {"preprocess": user.preprocess, "postprocess": user.postprocess}
        self.pre, self.post = user.preprocess, user.postprocess
        self.post_chunk = user.postprocess_chunk
        self.pre_cost, self.post_cost = cost["preprocess"], cost["postprocess"]

    # the drivers ----------------------------------------------------------------------------------

    async def run(self, body: Any, state: dict[str, Any], collect: StatsFn, pool: Executor, times: list[float]) -> Any:
        """The stages on the event loop; each stage's seconds appended to ``times``. Written out stage by stage:
        it runs for every request, and a loop over ``STAGES`` with its lookups cost ~3 % of sklearn's rate."""
        stage, batcher = "preprocess", self.batcher
        try:
            started = perf_counter()
            pre = self.pre
            if pre.fn is None:
                data = body
            elif not pre.is_async and self.pre_cost.cheap:  # no coroutine and no thread hop for cheap code
                data = self.pre_cost.call(pre.fn, body, state, collect)
            elif batcher is None:
                data = await self._hook(stage, pre, pool, body, state, collect)
            else:  # while it runs, a batch being gathered waits for this request (``DynamicBatcher.coming``)
                batcher.coming += 1
                try:
                    data = await self._hook(stage, pre, pool, body, state, collect)
                finally:
                    batcher.coming -= 1
            times.append((model_started := perf_counter()) - started)
            stage = "model"
            data = await self._model(data, state, collect, pool)
            times.append((post_started := perf_counter()) - model_started)
            stage, post = "postprocess", self.post
            if type(data) is Stream:  # postprocess sees whole answers; postprocess_chunk each chunk of a stream
                data = self._per_chunk(data, state, collect)
            elif post.fn is None:
                pass
            elif not post.is_async and self.post_cost.cheap:
                data = self.post_cost.call(post.fn, data, state, collect)
            else:
                data = await self._hook(stage, post, pool, data, state, collect)
            times.append(perf_counter() - post_started)
        except FerryError:
            raise
        except Exception as exc:
            raise self.error(stage, exc) from exc
        return data

    def run_here(self, body: Any, state: dict[str, Any], collect: StatsFn, times: list[float]) -> Any:
        """Every stage in this thread: the version has no batcher and no async code."""
        data, stage = body, STAGES[0]
        try:
            for stage in STAGES:
                started = perf_counter()
                fn = self.engine.run if stage == "model" else self.hooks[stage].fn
                if fn is not None:
                    data = fn(data, state, collect)
                times.append(perf_counter() - started)
        except FerryError:
            raise
        except Exception as exc:
            raise self.error(stage, exc) from exc
        return data

    def run_blocking(
        self,
        body: Any,
        state: dict[str, Any],
        collect: StatsFn,
        loop: asyncio.AbstractEventLoop | None,
        times: list[float],
    ) -> Any:
        """The stages in this (a user's) thread; async code and the batcher on ``loop``, waited for here.

        Sync stages run right here, never in the shared pool: a pool full of callers waiting for their
        callees' stages could never drain.
        """
        data, stage = body, STAGES[0]
        try:
            for stage in STAGES:
                started = perf_counter()
                if stage == "model":
                    data = self._model_blocking(data, state, collect, loop)
                else:
                    hook = self.hooks[stage]
                    if hook.fn is not None:
                        result = hook.fn(data, state, collect)
                        data = on_loop(result, loop) if hook.is_async else result
                times.append(perf_counter() - started)
        except FerryError:
            raise
        except Exception as exc:
            raise self.error(stage, exc) from exc
        return data

    async def model(self, data: Any, state: dict[str, Any], collect: StatsFn, pool: Executor) -> Any:
        """The model stage alone (a Ray model replica: its ingress runs pre/post)."""
        try:
            return await self._model(data, state, collect, pool)
        except FerryError:
            raise
        except Exception as exc:
            raise self.error("model", exc) from exc

    async def tensors(self, feeds: Feeds, pool: Executor) -> list[np.ndarray]:
        """The model alone on checked arrays (the V2 protocol), batched when the version batches."""
        try:
            if self.batcher is not None and self.batcher.admits(feeds):
                return await self.batcher.submit(feeds)
            if self.engine.is_async:  # V2 reaches only tensor engines (``v2.signature`` refuses the others)
                return await cast(AsyncTensorEngine, self.engine).run_tensors(feeds)
            outputs: list[np.ndarray] = await self.sync(
                "model", cast(TensorEngine, self.engine).run_tensors, pool, feeds
            )
            return outputs
        except FerryError:
            raise
        except Exception as exc:
            raise self.error("model", exc) from exc

    def _per_chunk(self, stream: Stream, state: dict[str, Any], collect: StatsFn) -> Stream:
        """A streamed model result with the user's ``postprocess_chunk`` applied to each chunk (sync only: a chunk
        must not wait for a thread), or as it is."""
        hook = self.post_chunk
        if hook.fn is None:
            return stream
        fn, key = hook.fn, self.spec.key
        if hook.is_async:
            raise UserCodeError(f"endpoint {key}: postprocess_chunk must be a plain def, not async def")

        def chunk(data: Any) -> Any:
            try:
                return fn(data, state, collect)
            except FerryError:
                raise
            except Exception as exc:
                raise self.error("postprocess", exc) from exc

        return stream.map(chunk)

    # one stage ------------------------------------------------------------------------------------

    async def sync(self, stage: str, fn: Callable[..., Any], pool: Executor, *args: Any) -> Any:
        """Sync ``fn`` right here when it is known to be cheap (a thread hop would cost more), else in ``pool``."""
        cost = self.cost[stage]
        if cost.cheap:
            return cost.call(fn, *args)
        return await self.in_pool(stage, fn, pool, *args)

    async def _hook(
        self, stage: str, hook: Hook, pool: Executor, data: Any, state: dict[str, Any], collect: StatsFn
    ) -> Any:
        """A hook that does not run right here: awaited when ``async def``, else in the pool."""
        assert hook.fn is not None  # the caller passed a hook it has
        if hook.is_async:
            return await hook.fn(data, state, collect)
        return await self.in_pool(stage, hook.fn, pool, data, state, collect)

    async def in_pool(self, stage: str, fn: Callable[..., Any], pool: Executor, *args: Any) -> Any:
        return await asyncio.wrap_future(self.track(pool.submit(self.cost[stage].call, fn, *args)))

    async def _model(self, data: Any, state: dict[str, Any], collect: StatsFn, pool: Executor) -> Any:
        batcher = self.batcher
        if batcher is not None and (feeds := batcher.feeds_for(data)) is not None:
            return batcher.engine.unwrap(await batcher.submit(feeds))  # batcher.engine: the TensorEngine it is
        if self.engine.is_async:
            return await self.engine.run(data, state, collect)
        return await self.sync("model", self.engine.run, pool, data, state, collect)

    def _model_blocking(
        self, data: Any, state: dict[str, Any], collect: StatsFn, loop: asyncio.AbstractEventLoop | None
    ) -> Any:
        batcher = self.batcher
        if batcher is not None and loop is not None and (feeds := batcher.feeds_for(data)) is not None:
            return batcher.engine.unwrap(on_loop(batcher.submit(feeds), loop))
        if self.engine.is_async:
            return on_loop(self.engine.run(data, state, collect), loop)
        return self.engine.run(data, state, collect)

    # errors ---------------------------------------------------------------------------------------

    def error(self, stage: str, exc: Exception) -> FerryError:
        """What the client is told when ``stage`` raised ``exc`` (not a FerryError: those pass as they are)."""
        key, engine = self.spec.key, self.spec.engine
        if stage != "model" or engine in ("custom", "custom_async"):
            stage = "process" if stage == "model" else stage  # a custom engine's model is the user's process
            return UserCodeError(
                f"endpoint {key}: {stage} raised {type(exc).__name__}: {exc}", endpoint=key, stage=stage
            )
        if isinstance(exc, MODEL_REFUSALS):
            return UserCodeError(
                f"endpoint {key}: the {engine} model rejected its input: {type(exc).__name__}: {exc}",
                endpoint=key,
                stage="model",
            )
        return EngineError(
            f"endpoint {key}: the {engine} engine failed: {type(exc).__name__}: {exc}", endpoint=key, stage="model"
        )
