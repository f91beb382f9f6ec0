"""vLLM's ``vllm.usage``, stand-in."""
