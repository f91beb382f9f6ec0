"""vLLM's ``vllm.v1``, stand-in."""
