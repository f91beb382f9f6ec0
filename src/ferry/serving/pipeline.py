"""EndpointRuntime: one endpoint version's Preprocess + Engine, run as pre -> engine -> post."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from ferry.control.spec import EndpointSpec
from ferry.engines import Engine, StatsFn, load_engine
from ferry.engines.tensor import TensorEngine
from ferry.errors import EngineError, FerryError, UserCodeError
from ferry.serving.batching import BatchPolicy, DynamicBatcher, dynamic_axes
from ferry.serving.inline import INLINE_BUDGET_S, CostMeter
from ferry.serving.userclass import Hook, UserCode, load_user_code


class EndpointRuntime:
    """A loaded endpoint version. Built off the request path; shared by every request it serves."""

    def __init__(self, spec: EndpointSpec, user: UserCode, engine: Engine, batcher: DynamicBatcher | None = None):
        self.spec = spec
        self.user = user
        self.engine = engine
        self.batcher = batcher
        self.inflight = 0
        self.requests = 0
        self.errors = 0
        self._idle = threading.Condition()
        pre, post = user.preprocess, user.postprocess
        self.all_sync = batcher is None and not (pre.is_async or post.is_async or engine.is_async)
        budget = inline_budget(spec)
        self._cost = {stage: CostMeter(budget) for stage in ("pipeline", "preprocess", "postprocess")}

    @classmethod
    def build(
        cls,
        spec: EndpointSpec,
        model_path: Path | None,
        code_path: Path | None,
        send_request: Callable[..., Any] | None,
    ) -> EndpointRuntime:
        """Import the user's code, call its ``load``, load the engine. Blocking: run it off the loop."""
        user = load_user_code(code_path, spec, send_request)
        loaded = _call_load(spec, user.load, model_path)
        engine = load_engine(spec, model_path, loaded, user)
        return cls(spec, user, engine, _batcher(spec, engine))

    @property
    def key(self) -> str:
        return self.spec.key

    # running ------------------------------------------------------------------------------------

    async def run(self, body: Any, collect: StatsFn, pool: Executor) -> Any:
        """pre -> engine -> post for one request; cheap sync code runs inline, costly sync code in ``pool``."""
        self._enter()
        try:
            state: dict[str, Any] = {}
            if self.all_sync:
                return await self._sync("pipeline", self.run_sync, pool, body, state, collect)
            data = await self._hook("preprocess", self.user.preprocess, pool, body, state, collect)
            data = await self._model(data, state, collect, pool)
            return await self._hook("postprocess", self.user.postprocess, pool, data, state, collect)
        except BaseException:
            self.errors += 1
            raise
        finally:
            self._leave()

    def run_sync(self, body: Any, state: dict[str, Any], collect: StatsFn) -> Any:
        """The whole pipeline in the calling thread, without batching (for blocking send_request)."""
        data = self._call_sync("preprocess", self.user.preprocess, body, state, collect)
        try:
            data = self.engine.run(data, state, collect)
        except FerryError:
            raise
        except Exception as exc:
            raise self._engine_error(exc) from exc
        return self._call_sync("postprocess", self.user.postprocess, data, state, collect)

    async def _sync(self, what: str, fn: Callable[..., Any], pool: Executor, *args: Any) -> Any:
        """Run sync ``fn`` inline when it is known to be cheap (a thread hop would cost more), else in pool."""
        meter = self._cost[what]
        if meter.cheap:
            return meter.call(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(pool, meter.call, fn, *args)

    async def _hook(self, stage: str, hook: Hook, pool: Executor, data: Any, state: dict, collect: StatsFn) -> Any:
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

    async def _model(self, data: Any, state: dict, collect: StatsFn, pool: Executor) -> Any:
        try:
            if self.batcher is not None:
                outputs = await self.batcher.submit(self.engine.prepare(data))
                return self.engine.unwrap(outputs)
            if self.engine.is_async:
                return await self.engine.run(data, state, collect)
            return await asyncio.get_running_loop().run_in_executor(pool, self.engine.run, data, state, collect)
        except FerryError:
            raise
        except Exception as exc:
            raise self._engine_error(exc) from exc

    def _call_sync(self, stage: str, hook: Hook, data: Any, state: dict, collect: StatsFn) -> Any:
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
        if isinstance(exc, (ValueError, TypeError, KeyError, IndexError)):
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

    # lifetime -----------------------------------------------------------------------------------

    def _enter(self) -> None:
        with self._idle:
            self.inflight += 1
            self.requests += 1

    def _leave(self) -> None:
        with self._idle:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.notify_all()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until no request is in flight (True) or ``timeout`` passes (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self.inflight == 0, timeout)

    def close(self) -> None:
        """Call the user's ``unload`` and release the engine; errors are reported, not raised."""
        try:
            if self.batcher is not None:
                self.batcher.close()
            if self.user.unload.fn is not None:
                result = self.user.unload.fn()
                if self.user.unload.is_async:
                    asyncio.run(result)
        finally:
            self.engine.close()


def _batcher(spec: EndpointSpec, engine: Engine) -> DynamicBatcher | None:
    policy = BatchPolicy.from_spec(spec)
    if not policy.enabled:
        return None
    if not isinstance(engine, TensorEngine):
        raise EngineError(
            f"endpoint {spec.key}: the {spec.engine} engine cannot batch requests: "
            "remove max_batch_size from --aux-config"
        )
    return DynamicBatcher(engine, policy, dynamic_axes(spec, engine.input_names), spec.key, inline_budget(spec))


def inline_budget(spec: EndpointSpec) -> float:
    """Seconds of sync work that may run on the event loop (aux config ``inline_budget_ms``; 0 turns it off)."""
    return float(spec.aux_config.get("inline_budget_ms", INLINE_BUDGET_S * 1000)) / 1000


def _call_load(spec: EndpointSpec, hook: Hook, model_path: Path | None) -> Any:
    if hook.fn is None or model_path is None:
        return None
    try:
        result = hook.fn(str(model_path))
        return asyncio.run(result) if hook.is_async else result
    except FerryError:
        raise
    except Exception as exc:
        raise UserCodeError(
            f"endpoint {spec.key}: load raised {type(exc).__name__}: {exc}", endpoint=spec.key, stage="load"
        ) from exc
