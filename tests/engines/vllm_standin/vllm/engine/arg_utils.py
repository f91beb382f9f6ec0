"""vLLM's ``AsyncEngineArgs``, stand-in: a dataclass (an unknown keyword is a TypeError, as in vLLM) that also
records the keywords it was given, for the tests to read (``kwargs``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class AsyncEngineArgs:
    """A few of vLLM's engine arguments, with vLLM's defaults."""

    model: str = "facebook/opt-125m"
    served_model_name: str | list[str] | None = None
    tokenizer: str | None = None
    trust_remote_code: bool = False
    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    device: str = "auto"
    gpu_memory_utilization: float = 0.9
    quantization: str | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    seed: int | None = None
    disable_log_stats: bool = False
    enable_log_requests: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> AsyncEngineArgs:
        self = super().__new__(cls)
        self.kwargs = dict(kwargs)  # what the caller passed, before the dataclass __init__ checks it
        return self
