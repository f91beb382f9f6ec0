"""The llm engine: ferry's own engine loop (``ferry.llm.loop``) behind the OpenAI side every LLM engine shares
(``engines/generating.py``).

It loads the version's model (``ferry.llm.model``), starts its engine loop, and hands the loop each choice's
sequence. The ``vllm`` engine name is served here too where vLLM's own engine cannot run (vLLM not installed, or
no GPU: ``engines/loading.py`` picks, the log says why), so ClearML's vllm example runs on any machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from ferry.control.spec import EndpointSpec
from ferry.engines.base import Process
from ferry.engines.generating import ENGINE_ARG_KEYS, GeneratingEngine, StepQueue, user_settings, vllm_engine_args
from ferry.engines.loading import vllm_unavailable
from ferry.errors import EngineError
from ferry.llm.budget import DEFAULT_BLOCK_SIZE, KVBudget, plan_budget
from ferry.llm.loop import EngineLoop
from ferry.llm.model import LoadedLM, load_lm
from ferry.llm.paged import kv_bytes_per_token
from ferry.llm.params import SamplingParams, Step
from ferry.settings import serving_workers

log = logging.getLogger(__name__)


class LLMEngine(GeneratingEngine):
    """One loaded LLM version and its engine loop."""

    def __init__(self, spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> None:
        aux = {**_vllm_args(spec), **spec.aux_config}
        settings = user_settings(loaded)
        super().__init__(spec, settings)
        if model_path is None:
            raise EngineError(f"endpoint {spec.key}: the {spec.engine} engine needs a model (--model-id or --name)")
        started = time.monotonic()
        self.lm, warnings = load_lm(
            Path(model_path),
            dtype=str(aux.get("dtype") or "auto"),
            device=str(aux.get("device") or "auto"),
            max_model_len=_int(aux.get("max_model_len")),
            chat_template=aux.get("chat_template") or settings.get("chat_template"),
        )
        for warning in [*warnings, *_workers_warning()]:
            log.warning("endpoint %s: %s", spec.key, warning)
        budget = plan_budget(
            kv_bytes_per_token(self.lm),
            self.lm.device,
            block_size=int(aux.get("block_size") or DEFAULT_BLOCK_SIZE),
            tokens=_int(aux.get("kv_cache_tokens")),
            memory_bytes=_int(aux.get("kv_cache_memory_bytes")),
        )
        self.loop = EngineLoop(
            self.lm,
            spec.key,
            budget=budget,
            max_num_seqs=int(aux.get("max_num_seqs", 16)),
            max_waiting=int(aux.get("max_waiting", 256)),
            max_num_batched_tokens=_int(aux.get("max_num_batched_tokens")),
            prefix_caching=bool(aux.get("enable_prefix_caching", True)),
            chunked_prefill=bool(aux.get("enable_chunked_prefill", True)),
            packed_weights=bool(aux.get("packed_weights", True)),
        )
        self.max_model_len = self.loop.max_model_len  # the model's, cut to the KV budget where smaller
        _log_loaded(spec, self.lm, Path(model_path), time.monotonic() - started)
        _log_budget(spec, budget, self.loop)

    def render_chat(self, messages: list[dict]) -> list[int]:
        return self.lm.render_chat(messages)

    def encode(self, text: str) -> list[int]:
        return self.lm.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.lm.tokenizer.decode(ids)

    def _start(self, prompt_ids: list[int], params: SamplingParams, queue: StepQueue, index: int) -> int:
        return self.loop.submit(prompt_ids, params, _sink(asyncio.get_running_loop(), queue, index))

    def _abort(self, handle: int) -> None:
        self.loop.abort(handle)

    def counts(self) -> tuple[int, int]:
        return self.loop.stats.running, self.loop.stats.waiting

    def cache_counts(self) -> tuple[float, int, int, int]:
        stats = self.loop.stats
        return stats.kv_blocks_used / stats.kv_blocks, stats.prefix_queries, stats.prefix_hits, stats.preemptions

    def close(self) -> None:
        """Stop the engine loop (what still runs ends with finish_reason "abort") and free the model."""
        self.loop.close()
        del self.lm


def _sink(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int) -> Any:
    def sink(item: Step | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop closed: the server is stopping
            loop.call_soon_threadsafe(queue.put_nowait, (index, item))

    return sink


def _vllm_args(spec: EndpointSpec) -> dict[str, Any]:
    """For a ``vllm`` endpoint: what ClearML's ``VLLM_ENGINE_ARGS`` (JSON) sets that the llm engine can honour."""
    args = vllm_engine_args(spec)
    honoured = {k: v for k, v in args.items() if k in ENGINE_ARG_KEYS and v is not None}
    ignored = sorted(k for k in args if k not in ENGINE_ARG_KEYS)
    if ignored:
        log.info("endpoint %s: VLLM_ENGINE_ARGS %s have no effect on ferry's llm engine", spec.key, ", ".join(ignored))
    return honoured


def _workers_warning() -> list[str]:
    workers = serving_workers()
    if workers == 1:
        return []
    return [
        f"each of the {workers} workers loads this model and runs its own engine on its share of the cores: an LLM "
        "endpoint batches best in one process (ferry serve --workers 1, what --workers auto picks for it)"
    ]


def _log_budget(spec: EndpointSpec, budget: KVBudget, loop: EngineLoop) -> None:
    log.info(
        "endpoint %s: KV cache of %d tokens (%d blocks of %d, %.0f MiB, %s), prefix caching %s, max_num_seqs %d, "
        "max_model_len %d",
        spec.key,
        budget.tokens,
        budget.blocks,
        budget.block_size,
        budget.bytes / 2**20,
        budget.source,
        "on" if loop.prefix_caching else "off",
        loop.max_num_seqs,
        loop.max_model_len,
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _log_loaded(spec: EndpointSpec, lm: LoadedLM, path: Path, seconds: float) -> None:
    params = sum(p.numel() for p in lm.model.parameters())
    size = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    if spec.engine == "vllm":
        log.warning(
            "endpoint %s: engine vllm is served by ferry's llm engine (%s); its OpenAI routes, settings and metrics "
            "are the same",
            spec.key,
            vllm_unavailable() or "vLLM's own engine was not picked",
        )
    log.info(
        "endpoint %s: loaded %s on %s as %s in %.1f s: %.1fM parameters, %.0f MiB (each worker process of "
        "`ferry serve --workers N` holds its own copy)",
        spec.key,
        path.name,
        lm.device,
        str(lm.dtype).removeprefix("torch."),
        seconds,
        params / 1e6,
        size / 2**20,
    )
