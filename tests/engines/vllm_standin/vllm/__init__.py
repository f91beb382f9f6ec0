"""A stand-in of vLLM for ferry's tests: only the API ``ferry.engines.vllm`` uses (see ../README.md)."""

from vllm.sampling_params import RequestOutputKind, SamplingParams

__all__ = ["RequestOutputKind", "SamplingParams"]
