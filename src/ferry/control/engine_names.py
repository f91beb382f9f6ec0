"""The engine names ``--engine`` takes: a module of its own, so the command line's parser needs no pydantic."""

from typing import Any

ENGINE_NAMES = (
    "sklearn",
    "xgboost",
    "lightgbm",
    "onnxruntime",
    "torchscript",
    "triton",
    "custom",
    "custom_async",
    "llm",
    "vllm",
)
"""Every engine an endpoint may name; ``ferry.engines`` registers one implementation per name."""

GENERATIVE = ("llm", "vllm")
"""Engines whose versions generate text: the OpenAI routes serve them, they record ``ferry_llm_*`` metrics."""

BATCHED_BY_DEFAULT = ("sklearn", "xgboost", "lightgbm", "onnxruntime", "torchscript")
"""Engines whose endpoints batch concurrent requests unless their aux config says otherwise (``max_batch_size=1``
turns it off): their models take a batch of rows in one call, and a batched answer equals the answer alone."""

DEFAULT_MAX_BATCH_SIZE = 32
"""Their batch cap when the aux config gives none (Triton's common setting; no queue delay by default)."""


def effective_max_batch_size(engine: str, aux: dict[str, Any]) -> tuple[int, bool]:
    """The batch cap an endpoint of ``engine`` with ``aux`` runs with, and whether it is the default (not asked for).
    (A triton endpoint's ``max_batch_size`` is the Triton server's: ferry does not batch in front of it.)"""
    given = aux.get("max_batch_size")
    if given is None:
        default = engine in BATCHED_BY_DEFAULT
        return (DEFAULT_MAX_BATCH_SIZE if default else 1), default
    try:
        return max(1, int(given)), False
    except (TypeError, ValueError):
        return 1, False


def queue_delay_ms(aux: dict[str, Any]) -> float:
    """The queue delay ``aux`` sets: ferry's ``max_queue_delay_ms``, else Triton's dynamic_batching spelling (µs)."""
    given = aux.get("max_queue_delay_ms")
    nested = aux.get("dynamic_batching")
    if given is None and isinstance(nested, dict) and "max_queue_delay_microseconds" in nested:
        given = float(nested["max_queue_delay_microseconds"]) / 1000
    return float(given or 0)


def batching_summary(engine: str, aux: dict[str, Any]) -> str:
    """How an endpoint batches, in words: "up to 32 (default)", "up to 8, waits up to 2 ms", "off", or "" where
    ferry does not batch requests (custom code; Triton, which batches itself; language models, batched per step)."""
    if engine not in BATCHED_BY_DEFAULT:
        return ""
    size, default = effective_max_batch_size(engine, aux)
    if size == 1:
        return "off"
    delay = queue_delay_ms(aux)
    return f"up to {size}{' (default)' if default else ''}" + (f", waits up to {delay:g} ms" if delay else "")
