"""vLLM's ``vllm.engine``, stand-in."""
