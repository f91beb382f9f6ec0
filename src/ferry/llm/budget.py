"""The KV budget: how many tokens' keys and values an engine loop may hold at once, whatever the load.

Given in tokens (``kv_cache_tokens``) or bytes (``kv_cache_memory_bytes``, vLLM's name), else a share
(``DEFAULT_SHARE``) of the memory free on the model's device when it loads: MemAvailable on a CPU, the free memory
CUDA reports on a GPU. That share is the server's, split between its workers (``ferry serve --workers N`` loads
the model in each of them), so more workers never take more of the machine. Never less than one sequence of
``max_model_len`` tokens needs; where the budget is smaller than that, ``max_model_len`` shrinks to it (with a
warning), so a lone sequence always fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ferry.settings import memory_available, serving_workers

DEFAULT_SHARE = 0.25
"""Of the memory free at load time, what the KV cache may take by default."""
MIN_TOKENS = 16
DEFAULT_BLOCK_SIZE = 16
"""Tokens per KV block unless ``block_size`` says otherwise."""


@dataclass(frozen=True)
class KVBudget:
    blocks: int
    block_size: int
    bytes_per_token: int
    source: str
    """How it was set, for the log: "kv_cache_tokens=...", or the share of free memory."""

    @property
    def tokens(self) -> int:
        return self.blocks * self.block_size

    @property
    def bytes(self) -> int:
        return self.tokens * self.bytes_per_token


def plan_budget(
    bytes_per_token: int,
    device: torch.device,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    tokens: int | None = None,
    memory_bytes: int | None = None,
) -> KVBudget:
    """The budget from the settings given (tokens win over bytes), else from the device's free memory."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, not {block_size}")
    if tokens is not None:
        source = f"kv_cache_tokens={tokens}"
    elif memory_bytes is not None:
        tokens, source = memory_bytes // bytes_per_token, f"kv_cache_memory_bytes={memory_bytes}"
    else:
        free, workers = free_memory(device), serving_workers()
        tokens = int(free * DEFAULT_SHARE / workers) // bytes_per_token
        split = f", split between {workers} workers" if workers > 1 else ""
        source = f"{DEFAULT_SHARE:.0%} of the {free / 2**30:.1f} GiB free on {device.type}{split}"
    if tokens < MIN_TOKENS:
        raise ValueError(f"a KV budget of {tokens} tokens ({source}) is too small: give at least {MIN_TOKENS}")
    return KVBudget(-(-tokens // block_size), block_size, bytes_per_token, source)


def free_memory(device: torch.device) -> int:
    """Bytes free for new allocations on ``device`` now."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = memory_available()
    if available is None:
        raise RuntimeError("/proc/meminfo has no MemAvailable: give kv_cache_tokens or kv_cache_memory_bytes")
    return available
