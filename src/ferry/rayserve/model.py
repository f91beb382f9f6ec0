"""The model deployment: one endpoint version's engine and dynamic batcher as Ray Serve replicas.

Each replica loads the version as ``ferry serve`` would (the registry's model file, the Preprocess
code for ``load`` and custom engines' ``process``) and runs only the model stage; the ingress runs
preprocess before and postprocess after. Batches form here, from the requests of every ingress replica.
Each replica is an instance to the store (role "ray model"): ``ferry status`` lists it, and its metrics
address reaches Prometheus through the ingress's ``/metrics/targets``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from ferry.control.spec import STORED, EndpointSpec
from ferry.metrics.collectors import Metrics
from ferry.rayserve.metrics import serve_metrics
from ferry.serving.request.pipeline import EndpointRuntime
from ferry.serving.revisions.heap import settle
from ferry.serving.v2 import Signature, signature

log = logging.getLogger(__name__)
ROLE = "ray model"
FLUSH_EVERY_S = 0.5


@serve.deployment
class ModelStage:
    """Built from the spec's JSON; reads the model and code from the store and artifact URLs in ``env``."""

    def __init__(self, spec_json: str, env: dict[str, str]) -> None:
        from ferry.control.store import Store
        from ferry.db import make_sql_engine
        from ferry.registry.artifacts import ArtifactStore
        from ferry.registry.models import ModelRegistry
        from ferry.settings import Settings

        os.environ.update(env)  # the launcher's FERRY_* settings (launcher.replica_env)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        spec = EndpointSpec.model_validate_json(spec_json, context=STORED)
        settings, started = Settings(), time.monotonic()
        self.store = Store(make_sql_engine(settings.store_url(), create_tables=False))
        artifacts = ArtifactStore(settings.artifact_url(), settings.cache_path(), progress=False)
        model_path = None
        if spec.model_id:
            model_path = artifacts.fetch(ModelRegistry(self.store.sql, artifacts).get(spec.model_id).artifact)
        code_path = artifacts.fetch(spec.preprocess) if spec.preprocess else None
        self.runtime = EndpointRuntime.build(spec, model_path, code_path, None)
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ferry-model")
        self.state: dict[str, Any] = {"role": ROLE, "endpoint": spec.key}
        self.metrics = Metrics() if settings.metrics else None
        if self.metrics is not None:
            batching = self.runtime.batcher is not None
            self.runtime.attach(self.metrics.endpoint(spec.name, spec.version, batching=batching, stages=("model",)))
            self.metrics.loaded(spec.name, spec.version, time.monotonic() - started)
            self.state["metrics"] = serve_metrics(self.metrics.registry, settings.host)
        settle(retired=False)  # this replica's one version is loaded: collections never walk its objects
        self.calls = 0
        self._flushing: asyncio.Task | None = None
        self._stop = threading.Event()
        self.instance_id = self.store.register_instance(settings.service, socket.gethostname(), os.getpid())
        beats = threading.Thread(target=self._heartbeats, args=(settings,), name="ferry-heartbeat", daemon=True)
        beats.start()
        log.info("endpoint %s: model replica ready in process %s", spec.key, os.getpid())

    async def __call__(self, data: Any, state: dict) -> tuple[Any, dict, list[dict]]:
        """The model stage on preprocess's output: (what postprocess gets, the state, collected statistics)."""
        self._flush_soon()
        self.calls += 1
        collected: list[dict] = []
        answer = await self.runtime.run_model(data, state, collected.append, self.pool)
        return answer, state, collected

    async def tensors(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Only the model on named arrays (the V2 protocol), batched with the other requests."""
        self._flush_soon()
        self.calls += 1
        return await self.runtime.run_model_tensors(feeds, self.pool)

    def signature(self) -> Signature:
        """The version's V2 tensors, as ``ferry serve`` would describe them (the ingress asks once)."""
        return signature(self.runtime)

    def _flush_soon(self) -> None:
        """Start moving what the batcher records into the scraped series, on this replica's loop (once)."""
        if self._flushing is None and self.metrics is not None:
            self._flushing = asyncio.get_running_loop().create_task(self._flushes())

    async def _flushes(self) -> None:
        assert self.metrics is not None  # started by _flush_soon only when there are metrics
        while not self._stop.is_set():
            self.metrics.flush()
            await asyncio.sleep(FLUSH_EVERY_S)

    def _heartbeats(self, settings: Any) -> None:
        """Beat like a ``ferry serve`` instance, with this replica's role, endpoint and metrics address."""
        while not self._stop.wait(settings.heartbeat_interval):
            state = {**self.state, "calls": self.calls}
            try:
                if not self.store.heartbeat(self.instance_id, None, state):
                    self.instance_id = self.store.register_instance(settings.service, socket.gethostname(), os.getpid())
            except Exception as exc:  # the store down: serving goes on
                log.warning("heartbeat failed: %s", exc)

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            try:
                self.store.remove_instance(self.instance_id)
            except Exception as exc:
                log.warning("could not deregister: %s", exc)
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()
