"""The model deployment: one endpoint version's engine and dynamic batcher as Ray Serve replicas.

Each replica loads the version as ``ferry serve`` would (the registry's model file, the Preprocess
code for ``load`` and custom engines' ``process``) and runs only the model stage; the ingress runs
preprocess before and postprocess after. Batches form here, from the requests of every ingress replica.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from ferry.control.spec import EndpointSpec
from ferry.serving.pipeline import EndpointRuntime
from ferry.serving.v2 import Signature, signature

log = logging.getLogger(__name__)


@serve.deployment
class ModelStage:
    """Built from the spec's JSON; reads the model and code from the store and artifact URLs in ``env``."""

    def __init__(self, spec_json: str, env: dict[str, str]) -> None:
        from ferry.control.store import Store
        from ferry.db import make_engine
        from ferry.registry.artifacts import ArtifactStore
        from ferry.registry.models import ModelRegistry
        from ferry.settings import Settings

        os.environ.update(env)  # the launcher's FERRY_* settings (launcher.replica_env)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        spec = EndpointSpec.model_validate_json(spec_json)
        settings = Settings()
        artifacts = ArtifactStore(settings.artifact_url(), settings.cache_path(), progress=False)
        model_path = None
        if spec.model_id:
            registry = ModelRegistry(Store(make_engine(settings.store_url(), create_tables=False)).engine, artifacts)
            model_path = artifacts.fetch(registry.get(spec.model_id).artifact)
        code_path = artifacts.fetch(spec.preprocess) if spec.preprocess else None
        self.runtime = EndpointRuntime.build(spec, model_path, code_path, None)
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ferry-model")
        log.info("endpoint %s: model replica ready in process %s", spec.key, os.getpid())

    async def __call__(self, data: Any, state: dict) -> tuple[Any, dict, list[dict]]:
        """The model stage on preprocess's output: (what postprocess gets, the state, collected statistics)."""
        collected: list[dict] = []
        answer = await self.runtime.run_model(data, state, collected.append, self.pool)
        return answer, state, collected

    async def tensors(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Only the model on named arrays (the V2 protocol), batched with the other requests."""
        return await self.runtime.run_model_tensors(feeds, self.pool)

    def signature(self) -> Signature:
        """The version's V2 tensors, as ``ferry serve`` would describe them (the ingress asks once)."""
        return signature(self.runtime)

    def __del__(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()
