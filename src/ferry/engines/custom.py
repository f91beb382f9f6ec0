"""The custom engines: the user's ``Preprocess.process`` is the model call (no model file of ours)."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

from ferry.control.spec import EndpointSpec
from ferry.engines.base import Process, StatsFn
from ferry.errors import EngineError


class CustomEngine:
    """Calls ``process(data, state, collect)``; async exactly when ``process`` is ``async def``."""

    is_async = False

    def __init__(self, spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> None:
        if process is None:
            raise EngineError(
                f"endpoint {spec.key}: {spec.engine} engine needs Preprocess.process "
                "(def process(self, data, state, collect_custom_statistics_fn) in the preprocess file)",
                endpoint=spec.key,
            )
        self._process: Any = process  # the user's function (sync or async); None once closed
        self.is_async = inspect.iscoroutinefunction(process)

    def run(self, data: Any, state: dict, collect: StatsFn) -> Any:
        return self._process(data, state, collect)

    def close(self) -> None:
        self._process = None


class CustomAsyncEngine(CustomEngine):
    """Always async: a plain ``process`` runs in a worker thread so the event loop stays free."""

    def __init__(self, spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> None:
        super().__init__(spec, model_path, loaded, process)
        self._sync = not self.is_async
        self.is_async = True

    def run(self, data: Any, state: dict, collect: StatsFn) -> Any:
        if self._sync:
            return asyncio.to_thread(self._process, data, state, collect)
        return self._process(data, state, collect)
