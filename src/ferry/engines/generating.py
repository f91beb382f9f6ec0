"""GeneratingEngine: the OpenAI side every LLM engine shares, whatever generates its tokens.

Per request it parses the body (``ferry.llm.openai_api``), renders the chat template or encodes the prompt, checks
the context length, starts one sequence per choice, and builds OpenAI's answer or chunks from the steps, timing
them on the endpoint's meter. A subclass loads the model and its tokenizer and starts and aborts sequences:
``LLMEngine`` on ferry's engine loop (``engines/llm.py``), ``VLLMEngine`` on vLLM's ``AsyncLLM`` (``engines/vllm.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ferry.control.spec import EndpointSpec
from ferry.engines.base import StatsFn
from ferry.errors import EngineError, InvalidInput
from ferry.llm.openai_answers import ChatChunks, Choice, CompletionChunks, chat_answer, completion_answer, new_id
from ferry.llm.openai_api import GenerationRequest, InvalidRequest, parse_chat, parse_completion
from ferry.llm.params import SamplingParams, Step
from ferry.streams import Stream

CHAT, COMPLETIONS = "chat/completions", "completions"
ENGINE_ARG_KEYS = (
    "dtype",
    "max_model_len",
    "max_num_seqs",
    "device",
    "block_size",
    "enable_prefix_caching",
    "enable_chunked_prefill",
    "max_num_batched_tokens",
    "kv_cache_memory_bytes",
)
"""Settings that are vLLM engine arguments and aux config keys of the same name, honoured by both LLM engines (the
aux config wins over VLLM_ENGINE_ARGS)."""

StepQueue = asyncio.Queue  # of (choice index, Step or the error that ended the sequence)


class GeneratingEngine(ABC):
    """One loaded LLM version: OpenAI requests in, answers or Streams of chunks out.

    A subclass sets ``max_model_len``, renders and encodes prompts, starts a sequence whose steps it puts on a
    queue as ``(index, Step)`` (``_start``), aborts one (``_abort``) and says how many run and wait (``counts``).
    """

    is_async = True
    max_model_len: int
    """Prompt and generated tokens of one sequence at most."""

    def __init__(self, spec: EndpointSpec, settings: Mapping[str, Any]) -> None:
        self.spec = spec
        self.key = spec.key
        self.response_role = str(settings.get("response_role") or "assistant")
        self.meter: Any = None
        """An ``LLMMeter`` once the runtime is counted (``attach_meter``); None records nothing."""

    # what a subclass provides ---------------------------------------------------------------------

    @abstractmethod
    def render_chat(self, messages: list[dict]) -> list[int]:
        """The token ids of ``messages`` rendered with the chat template; ValueError when they cannot be."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The token ids of a completion prompt."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """The text of a prompt's token ids (for ``echo``)."""

    @abstractmethod
    def _start(self, prompt_ids: list[int], params: SamplingParams, queue: StepQueue, index: int) -> Any:
        """Start one sequence whose steps go on ``queue`` as ``(index, step)``, the last with a finish reason (or
        an exception). Returns what ``_abort`` takes. Raises Overloaded when no more may wait."""

    @abstractmethod
    def _abort(self, handle: Any) -> None:
        """End a started sequence early (its client went away); no step of it needs to follow."""

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """(running, waiting) sequences, for the gauges."""

    @abstractmethod
    def close(self) -> None:
        """Stop generating and free the model."""

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
        echo = [self.decode(p) for p in prompts] if request.echo else None
        return completion_answer(id_, created, request.model, choices, echo_prompts=echo, n=request.n)

    def _prompts(self, request: GenerationRequest) -> list[list[int]]:
        """Each prompt's token ids, checked against the context length."""
        try:
            if request.messages is not None:
                prompts = [self.render_chat(request.messages)]
            else:
                prompts = [p if isinstance(p, list) else self.encode(p) for p in request.prompts]
        except ValueError as exc:
            raise InvalidInput(f"endpoint {self.key}: {exc}", param="messages") from None
        for ids in prompts:
            self._check_length(ids, request.params.max_tokens)
        return prompts

    def _check_length(self, ids: list[int], max_tokens: int | None) -> None:
        limit = self.max_model_len
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

    def _submit(self, request: GenerationRequest, prompts: list[list[int]]) -> tuple[StepQueue, list[Any]]:
        """One sequence per prompt and choice; their steps arrive on one queue as (choice index, step)."""
        queue: StepQueue = asyncio.Queue()
        handles: list[Any] = []
        try:
            for p, ids in enumerate(prompts):
                for c in range(request.n):
                    index, params = p * request.n + c, request.params
                    if params.seed is not None and request.n > 1:
                        params = replace(params, seed=params.seed + c)  # n choices of one seed differ, reproducibly
                    handles.append(self._start(ids, params, queue, index))
        except BaseException:
            for handle in handles:
                self._abort(handle)
            raise
        return queue, handles

    async def _steps(self, request: GenerationRequest, prompts: list[list[int]]) -> AsyncIterator[tuple[int, Step]]:
        """Every choice's steps as they come, until all have ended; aborts what still runs when left early.
        Times each token as the event loop receives it (what a client sees) on the endpoint's meter."""
        queue, handles = self._submit(request, prompts)
        running = set(range(len(handles)))
        started = time.perf_counter()
        last: dict[int, float] = {}
        counts = dict.fromkeys(running, (0, 0))  # (prompt tokens prefilled, tokens generated) per choice
        try:
            while running:
                index, item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                self._time(index, item, started, last)
                counts[index] = (item.prompt_tokens, item.completion_tokens)
                if item.finish_reason is not None:
                    running.discard(index)
                yield index, item
        finally:
            for index in running:  # left early: counted as aborted with what it had prefilled and generated
                self._abort(handles[index])
                self._ended("abort", *counts[index], started)

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
        """Set the gauges from the engine's counts (a scrape is coming)."""
        if self.meter is not None:
            self.meter.gauges(*self.counts())
            cache = self.cache_counts()
            if cache is not None:
                self.meter.cache(*cache)

    def cache_counts(self) -> tuple[float, int, int, int] | None:
        """(KV blocks in use as a share of the budget, prefix-cache queries, hits, preemptions), totals so far;
        None where the engine does not say (vLLM's own metrics have them)."""
        return None

    # answers ----------------------------------------------------------------------------------------

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
            decode = self.decode
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


def user_settings(loaded: Any) -> dict[str, Any]:
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


def vllm_engine_args(spec: EndpointSpec) -> dict[str, Any]:
    """For a ``vllm`` endpoint: ClearML's ``VLLM_ENGINE_ARGS`` (JSON, read as ClearML reads it: single quotes
    dropped first); {} for any other engine or when it is unset."""
    text = os.environ.get("VLLM_ENGINE_ARGS", "") if spec.engine == "vllm" else ""
    if not text.strip():
        return {}
    try:
        args = json.loads(text.replace("'", ""))
    except ValueError as exc:
        raise EngineError(f"endpoint {spec.key}: VLLM_ENGINE_ARGS is not JSON ({exc}): {text[:200]}") from None
    if not isinstance(args, dict):
        raise EngineError(f"endpoint {spec.key}: VLLM_ENGINE_ARGS must be a JSON object, not {text[:200]}")
    return args
