"""Assembling an endpoint version's parts (user code, its ``load``, the engine, the batcher), and releasing them.

Blocking work for the reconciler's thread (or a Ray model replica's start), never for the request path.
``EndpointRuntime.build`` turns the parts into a runtime; ``release`` undoes a build, whether it failed
half-way or its runtime was retired.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ferry.control.spec import EndpointSpec
from ferry.engines import Engine, load_engine
from ferry.engines.tensor import RowBatching, TensorEngine
from ferry.errors import EngineError, FerryError, UserCodeError
from ferry.serving.batching.batcher import BatchPolicy, DynamicBatcher
from ferry.serving.batching.instances import default_instances
from ferry.serving.batching.padding import batch_axes
from ferry.serving.request.inline import INLINE_BUDGET_S
from ferry.serving.usercode.userclass import Hook, UserCode, load_user_code

log = logging.getLogger("ferry.serving.assembly")  # the name from before serving/ had subpackages: users' log filters


class Parts(NamedTuple):
    """What one endpoint version is made of once loaded (``EndpointRuntime`` takes them in this order)."""

    user: UserCode
    engine: Engine
    batcher: DynamicBatcher | None


def load_parts(
    spec: EndpointSpec, model_path: Path | None, code_path: Path | None, send_request: Callable[..., Any] | None
) -> Parts:
    """Import the user's code, call its ``load``, load the engine and its batcher; on failure release what began."""
    user = load_user_code(code_path, spec, send_request)
    try:
        loaded = _call_load(spec, user.load, model_path)
    except BaseException:
        user.close()
        raise
    engine: Engine | None = None
    batcher: DynamicBatcher | None = None
    try:
        engine = load_engine(spec, model_path, loaded, user.process.fn)
        batcher = _batcher(spec, engine)
        return Parts(user, engine, batcher)
    except BaseException:
        # What load() started (sessions, threads, GPU memory) would outlive every failed retry otherwise.
        release(spec, user, engine, batcher)
        raise


def inline_budget(spec: EndpointSpec) -> float:
    """Seconds of sync work that may run on the event loop (aux config ``inline_budget_ms``; 0 turns it off)."""
    return float(spec.aux_config.get("inline_budget_ms", INLINE_BUDGET_S * 1000)) / 1000


def release(spec: EndpointSpec, user: UserCode, engine: Engine | None, batcher: DynamicBatcher | None) -> None:
    """Close the batcher, call ``unload``, close the engine, forget the user's modules; errors are logged.

    For a retired version, or for as far as a failed build got (``engine`` and ``batcher`` may be None).
    """
    try:
        if batcher is not None:
            batcher.close()
        if user.unload.fn is not None:
            result = user.unload.fn()
            if user.unload.is_async:
                asyncio.run(result)
    except Exception as exc:  # a failed build's own error is the one the user needs; this one is logged
        log.warning("endpoint %s: unload raised %s: %s", spec.key, type(exc).__name__, exc)
    finally:
        try:
            if engine is not None:
                engine.close()
        finally:
            user.close()


def _batcher(spec: EndpointSpec, engine: Engine) -> DynamicBatcher | None:
    policy = BatchPolicy.from_spec(spec, default_instances(engine))
    if not policy.enabled or spec.engine == "triton":  # its max_batch_size is Triton's: the server batches
        return None
    if not isinstance(engine, TensorEngine):
        raise EngineError(
            f"endpoint {spec.key}: the {spec.engine} engine cannot batch requests: "
            "remove max_batch_size from --aux-config"
        )
    axes = batch_axes(spec, engine.input_names, rows_only=isinstance(engine, RowBatching))
    return DynamicBatcher(engine, policy, axes, spec.key, inline_budget(spec))


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
