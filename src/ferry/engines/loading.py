"""The engine name table and loading by name: heavy libraries are imported only for an engine in use.

Kept apart from ``base`` (the protocol every engine module imports), so that ``compiled`` (an engine that
wraps another) imports the protocol without a cycle back to the loader.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ferry.control.spec import EndpointSpec
from ferry.engines.base import Engine, Process
from ferry.errors import EngineError, FerryError

ENGINES: dict[str, str | None] = {
    "sklearn": "ferry.engines.sklearn:SklearnEngine",
    "xgboost": "ferry.engines.xgboost:XGBoostEngine",
    "lightgbm": "ferry.engines.lightgbm:LightGBMEngine",
    "onnxruntime": "ferry.engines.onnxruntime:OnnxRuntimeEngine",
    "torchscript": "ferry.engines.torchscript:TorchScriptEngine",
    "triton": "ferry.engines.triton:TritonEngine",
    "custom": "ferry.engines.custom:CustomEngine",
    "custom_async": "ferry.engines.custom:CustomAsyncEngine",
    "llm": "ferry.engines.llm:LLMEngine",
    "vllm": "ferry.engines.vllm:VLLMEngine",
}
"""Engine name -> "module:Class" (None: not implemented in this version). ``vllm`` falls back to ``llm`` where
vLLM's own engine cannot run (``vllm_unavailable``)."""

REQUIREMENTS = {
    "sklearn": ("scikit-learn", "pip install scikit-learn"),
    "xgboost": ("xgboost", "pip install 'ferry[xgboost]'"),
    "lightgbm": ("lightgbm", "pip install 'ferry[lightgbm]'"),
    "onnxruntime": ("onnxruntime", "pip install 'ferry[onnx]'"),
    "torchscript": ("torch", "pip install 'ferry[torch]'"),
    "triton": ("tritonclient", "pip install 'ferry[triton]'"),
    "llm": ("torch and transformers", "pip install 'ferry[llm]'"),
    "vllm": ("torch and transformers", "pip install 'ferry[llm]'"),
}
"""Engine name -> (the library it needs, how to install it)."""

COMPILABLE = ("sklearn", "xgboost", "lightgbm")
"""Engines whose models aux ``compile=onnx`` converts (engines/compiled.py)."""


def load_engine(spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> Engine:
    """Build the engine ``spec.engine`` for one endpoint version.

    ``loaded`` is what the user's ``load(model_path)`` returned; classic engines use it as the model
    when it is not None, else they load ``model_path`` themselves. ``process`` is the user's
    ``Preprocess.process`` (custom engines call it). Raises EngineError on any failure.
    """
    engine_cls = engine_class(spec.engine)
    try:
        engine = engine_cls(spec, model_path, loaded, process)
    except FerryError:
        raise
    except Exception as exc:
        raise EngineError(
            f"endpoint {spec.key}: the {spec.engine} engine failed to load: {type(exc).__name__}: {exc}",
            endpoint=spec.key,
        ) from exc
    if spec.aux_config.get("compile") == "onnx" and spec.engine in COMPILABLE:
        from ferry.engines.compiled import compile_engine  # converters load only for endpoints that ask

        return compile_engine(spec, engine)  # never raises: an uncompiled model is served as it is
    return engine


def engine_class(name: str) -> type:
    """Import and return the class that implements engine ``name``."""
    target = ENGINES.get(name)
    if name == "vllm" and vllm_unavailable() is not None:
        target = ENGINES["llm"]  # its load logs why (LLMEngine)
    if target is None:
        raise EngineError(f"engine {name} is not available in this version of ferry")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        library, install = REQUIREMENTS.get(name, (name, f"pip install {name}"))
        raise EngineError(f"the {name} engine needs {library}: {install} ({exc})") from exc
    return getattr(module, class_name)


VLLM_FORCE_ENV = "FERRY_VLLM_FORCE"
"""Set to 1: pick vLLM's engine without a GPU (a stand-in of vLLM in tests, or vLLM's CPU build)."""


def vllm_unavailable() -> str | None:
    """Why engine ``vllm`` is served by ferry's llm engine here, or None when vLLM's own engine runs it: vLLM must
    import and torch must see a GPU (or ``FERRY_VLLM_FORCE=1``)."""
    try:
        importlib.import_module("vllm")
    except Exception as exc:  # a broken install or driver too: the llm engine still serves
        if isinstance(exc, ImportError) and exc.name == "vllm":
            return "vLLM is not installed: pip install 'ferry[vllm]'"
        return f"vLLM does not import: {type(exc).__name__}: {exc}"
    if os.environ.get(VLLM_FORCE_ENV) == "1":
        return None
    import torch  # vLLM brings it

    if not torch.cuda.is_available():
        return "no GPU: torch.cuda.is_available() is False"
    return None


PRELOAD = {"sklearn": ("joblib", "sklearn.base")}
"""Libraries a version of the engine imports as it loads, beyond its engine module (which imports the rest)."""


def preload(name: str) -> None:
    """Import what loading a version of engine ``name`` imports, so that a load in this process later
    skips those seconds (``ferry serve --ray``'s ingress replicas, ahead of a bridge)."""
    engine_class(name)
    for module in PRELOAD.get(name, ()):
        importlib.import_module(module)
