"""The llm engine: an OpenAI chat or completions request in, an answer (or a Stream of chunks) out.

It loads the version's model (``ferry.llm.model``), starts its engine loop (``ferry.llm.loop``), and per request:
parses the body (``ferry.llm.openai_api``), renders the chat template or encodes the prompt, submits one sequence
per choice, and builds OpenAI's answer or chunks from the steps. The ``vllm`` engine name is served here too
until vLLM itself is installed with a GPU (the log says so), so ClearML's vllm example runs on any machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ferry.control.spec import EndpointSpec
from ferry.engines.base import Process, StatsFn
from ferry.errors import EngineError, InvalidInput
from ferry.llm.loop import EngineLoop
from ferry.llm.model import LoadedLM, load_lm
from ferry.llm.openai_answers import ChatChunks, Choice, CompletionChunks, chat_answer, completion_answer, new_id
from ferry.llm.openai_api import GenerationRequest, InvalidRequest, parse_chat, parse_completion
from ferry.llm.params import Step
from ferry.streams import Stream

log = logging.getLogger(__name__)

CHAT, COMPLETIONS = "chat/completions", "completions"
VLLM_ARGS = {"dtype": "dtype", "max_model_len": "max_model_len", "max_num_seqs": "max_num_seqs", "device": "device"}
"""VLLM_ENGINE_ARGS keys (ClearML's way to set vLLM up) that the llm engine honours, and its aux key for each."""


class LLMEngine:
    """One loaded LLM version and its engine loop."""

    is_async = True

    def __init__(self, spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> None:
        self.spec = spec
        self.key = spec.key
        aux = {**_vllm_args(spec), **spec.aux_config}
        settings = _user_settings(loaded)
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
        for warning in warnings:
            log.warning("endpoint %s: %s", spec.key, warning)
        self.response_role = str(settings.get("response_role") or "assistant")
        self.meter: Any = None
        """An ``LLMMeter`` once the runtime is counted (``attach_meter``); None records nothing."""
        self.loop = EngineLoop(
            self.lm,
            spec.key,
            max_num_seqs=int(aux.get("max_num_seqs", 16)),
            max_waiting=int(aux.get("max_waiting", 256)),
        )
        _log_loaded(spec, self.lm, Path(model_path), time.monotonic() - started)

    # the request ----------------------------------------------------------------------------------

    async def run(self, data: Any, state: dict, collect: StatsFn) -> Any:
        """An OpenAI answer (dict), or a Stream of its chunks when the request says ``stream``."""
        route, body = unwrap(data)
        try:
            request = parse_chat(body) if route == CHAT else parse_completion(body)
        except InvalidRequest as exc:
            raise InvalidInput(str(exc), param=exc.param, code=exc.code) from None
        prompts = self._prompts(request)
        if request.stream:
            return Stream(self._stream(route, request, prompts), label=f"endpoint {self.key}")
        choices = await self._generate(request, prompts)
        id_, created = new_id("chat" if route == CHAT else "completion"), int(time.time())
        if route == CHAT:
            return chat_answer(id_, created, request.model, choices, role=self.response_role)
        echo = [self.lm.tokenizer.decode(p) for p in prompts] if request.echo else None
        return completion_answer(id_, created, request.model, choices, echo_prompts=echo, n=request.n)

    def _prompts(self, request: GenerationRequest) -> list[list[int]]:
        """Each prompt's token ids, checked against the context length."""
        try:
            if request.messages is not None:
                prompts = [self.lm.render_chat(request.messages)]
            else:
                prompts = [p if isinstance(p, list) else self.lm.encode(p) for p in request.prompts]
        except ValueError as exc:
            raise InvalidInput(f"endpoint {self.key}: {exc}", param="messages") from None
        for ids in prompts:
            self._check_length(ids, request.params.max_tokens)
        return prompts

    def _check_length(self, ids: list[int], max_tokens: int | None) -> None:
        limit = self.lm.max_model_len
        if not ids:
            raise InvalidInput("the prompt is empty: it has no tokens", param="prompt")
        if len(ids) >= limit:
            raise InvalidInput(
                f"the prompt has {len(ids)} tokens, and this endpoint's max_model_len is {limit}: shorten it",
                param="messages",
                code="context_length_exceeded",
            )
        if max_tokens is not None and len(ids) + max_tokens > limit:
            raise InvalidInput(
                f"the prompt's {len(ids)} tokens and max_tokens={max_tokens} exceed this endpoint's max_model_len "
                f"of {limit}: lower max_tokens to {limit - len(ids)} or less",
                param="max_tokens",
                code="context_length_exceeded",
            )

    def _submit(self, request: GenerationRequest, prompts: list[list[int]]) -> tuple[asyncio.Queue, list[int]]:
        """One sequence per prompt and choice; their steps arrive on one queue as (choice index, step)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Step | BaseException]] = asyncio.Queue()
        seq_ids: list[int] = []
        try:
            for p, ids in enumerate(prompts):
                for c in range(request.n):
                    index, params = p * request.n + c, request.params
                    if params.seed is not None and request.n > 1:
                        params = replace(params, seed=params.seed + c)  # n choices of one seed differ, reproducibly
                    seq_ids.append(self.loop.submit(ids, params, _sink(loop, queue, index)))
        except BaseException:
            for seq_id in seq_ids:
                self.loop.abort(seq_id)
            raise
        return queue, seq_ids

    async def _steps(self, request: GenerationRequest, prompts: list[list[int]]) -> AsyncIterator[tuple[int, Step]]:
        """Every choice's steps as they come, until all have ended; aborts what still runs when left early.
        Times each token as the event loop receives it (what a client sees) on the endpoint's meter."""
        queue, seq_ids = self._submit(request, prompts)
        running = set(range(len(seq_ids)))
        started = time.perf_counter()
        last: dict[int, float] = {}
        try:
            while running:
                index, item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                self._time(index, item, started, last)
                if item.finish_reason is not None:
                    running.discard(index)
                yield index, item
        finally:
            for index in running:
                self.loop.abort(seq_ids[index])
                self._ended("abort", 0, 0, started)

    def _time(self, index: int, step: Step, started: float, last: dict[int, float]) -> None:
        meter, now = self.meter, time.perf_counter()
        if meter is None:
            return
        tokens = len(step.token_ids)
        if tokens:
            previous = last.get(index)
            if previous is None:
                meter.ttft.observe(now - started)
                tokens -= 1
            for _ in range(tokens):  # steps a slow reader got joined: their gap shared
                meter.itl.observe((now - (previous or now)) / max(tokens, 1))
            last[index] = now
        if step.finish_reason is not None:
            self._ended(step.finish_reason, step.prompt_tokens, step.completion_tokens, started)

    def _ended(self, reason: str, prompt_tokens: int, generated: int, started: float) -> None:
        if self.meter is not None:
            self.meter.sequence_ended(reason, prompt_tokens, generated, time.perf_counter() - started)

    # metrics ----------------------------------------------------------------------------------------

    def attach_meter(self, meter: Any) -> None:
        """Record on ``meter`` (a ``metrics.llm.LLMMeter``) from now on; None: record nothing."""
        self.meter = meter

    def refresh_meter(self) -> None:
        """Set the running and waiting gauges from the engine loop's counts (a scrape is coming)."""
        if self.meter is not None:
            self.meter.gauges(self.loop.stats.running, self.loop.stats.waiting)

    async def _generate(self, request: GenerationRequest, prompts: list[list[int]]) -> list[Choice]:
        texts: dict[int, list[str]] = {}
        logprobs: dict[int, list] = {}
        last: dict[int, Step] = {}
        async for index, step in self._steps(request, prompts):
            texts.setdefault(index, []).append(step.text)
            if step.logprobs is not None:
                logprobs.setdefault(index, []).extend(step.logprobs)
            last[index] = step
        return [
            Choice(
                "".join(texts[i]),
                last[i].finish_reason or "stop",
                logprobs.get(i) if request.params.logprobs is not None else None,
                last[i].prompt_tokens,
                last[i].completion_tokens,
            )
            for i in sorted(last)
        ]

    def _stream(self, route: str, request: GenerationRequest, prompts: list[list[int]]) -> AsyncIterator[dict]:
        """The chunks of a streamed answer: chat's open with each choice's role, completions' with its echo."""
        total = len(prompts) * request.n
        chunks: ChatChunks | CompletionChunks
        if route == CHAT:
            chunks = ChatChunks(new_id("chat"), int(time.time()), request.model, role=self.response_role)
            opening = [chunks.role(index) for index in range(total)]
        else:
            chunks = CompletionChunks(new_id("completion"), int(time.time()), request.model)
            decode = self.lm.tokenizer.decode
            opening = [chunks.echo(i, decode(prompts[i // request.n])) for i in range(total)] if request.echo else []
        return self._chunks(request, prompts, chunks, opening)

    async def _chunks(
        self,
        request: GenerationRequest,
        prompts: list[list[int]],
        chunks: ChatChunks | CompletionChunks,
        opening: list[dict],
    ) -> AsyncIterator[dict]:
        for chunk in opening:
            yield chunk
        usage = _Usage()
        async for index, step in self._steps(request, prompts):
            usage.add(index, step)
            delta = chunks.delta(index, step)
            if delta is not None:
                yield delta
        if request.include_usage:
            yield chunks.usage(*usage.totals(request.n))

    def close(self) -> None:
        """Stop the engine loop (what still runs ends with finish_reason "abort") and free the model."""
        self.loop.close()
        del self.lm


class _Usage:
    """Token counts of a streamed answer: each prompt once, every choice's completion tokens."""

    def __init__(self) -> None:
        self.prompt: dict[int, int] = {}
        self.completion: dict[int, int] = {}

    def add(self, index: int, step: Step) -> None:
        self.prompt[index], self.completion[index] = step.prompt_tokens, step.completion_tokens

    def totals(self, n: int) -> tuple[int, int]:
        prompt = sum(tokens for index, tokens in self.prompt.items() if index % n == 0)
        return prompt, sum(self.completion.values())


def unwrap(data: Any) -> tuple[str, dict[str, Any]]:
    """(route, request body) from what the preprocess returned: ClearML's ``{"request": ..., ...}`` envelope (a
    dict or a pydantic object as ``request``), or a bare OpenAI body (chat when it has ``messages``)."""
    route = None
    if isinstance(data, Mapping) and "request" in data:
        route, data = data.get("route"), data["request"]
    if hasattr(data, "model_dump"):
        data = data.model_dump(exclude_unset=True)
    if not isinstance(data, Mapping):
        raise InvalidInput(f"an LLM endpoint takes an OpenAI request body (a JSON object), not {type(data).__name__}")
    if route not in (CHAT, COMPLETIONS):
        route = CHAT if "messages" in data else COMPLETIONS
    return route, dict(data)


def _sink(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int) -> Any:
    def sink(item: Step | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop closed: the server is stopping
            loop.call_soon_threadsafe(queue.put_nowait, (index, item))

    return sink


def _user_settings(loaded: Any) -> dict[str, Any]:
    """``chat_template`` and ``response_role`` from what ``Preprocess.load`` returned (ClearML's vllm example returns
    ``vllm_model_config`` and ``chat_settings``)."""
    if not isinstance(loaded, Mapping):
        return {}
    settings: dict[str, Any] = {}
    for part in ("chat_settings", "vllm_model_config"):
        if isinstance(loaded.get(part), Mapping):
            settings.update({k: v for k, v in loaded[part].items() if v is not None})
    template = settings.get("chat_template")
    if isinstance(template, str) and "{" not in template and Path(template).is_file():
        settings["chat_template"] = Path(template).read_text()  # vLLM takes a file name or the template itself
    return settings


def _vllm_args(spec: EndpointSpec) -> dict[str, Any]:
    """For a ``vllm`` endpoint: what ClearML's ``VLLM_ENGINE_ARGS`` (JSON) sets that the llm engine can honour."""
    text = os.environ.get("VLLM_ENGINE_ARGS", "") if spec.engine == "vllm" else ""
    if not text.strip():
        return {}
    try:
        args = json.loads(text.replace("'", ""))
    except ValueError as exc:
        raise EngineError(f"endpoint {spec.key}: VLLM_ENGINE_ARGS is not JSON ({exc}): {text[:200]}") from None
    honoured = {VLLM_ARGS[k]: v for k, v in args.items() if k in VLLM_ARGS and v is not None}
    ignored = sorted(k for k in args if k not in VLLM_ARGS)
    if ignored:
        log.info("endpoint %s: VLLM_ENGINE_ARGS %s have no effect on ferry's llm engine", spec.key, ", ".join(ignored))
    return honoured


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _log_loaded(spec: EndpointSpec, lm: LoadedLM, path: Path, seconds: float) -> None:
    params = sum(p.numel() for p in lm.model.parameters())
    size = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    if spec.engine == "vllm":
        log.warning(
            "endpoint %s: engine vllm is served by ferry's llm engine (vLLM's own engine is not part of this "
            "ferry yet); its OpenAI routes, settings and metrics are the same",
            spec.key,
        )
    log.info(
        "endpoint %s: loaded %s on %s as %s in %.1f s: %.1fM parameters, %.0f MiB (each worker process of "
        "`ferry serve --workers N` holds its own copy); max_model_len %d",
        spec.key,
        path.name,
        lm.device,
        str(lm.dtype).removeprefix("torch."),
        seconds,
        params / 1e6,
        size / 2**20,
        lm.max_model_len,
    )
