"""The engine names ``--engine`` takes: a module of its own, so the command line's parser needs no pydantic."""

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
