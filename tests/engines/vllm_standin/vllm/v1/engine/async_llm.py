"""vLLM's ``AsyncLLM``, stand-in: no model and no GPU.

Output token i of a request is a fixed function of its prompt and i, picked among the tokenizer's plain-text tokens;
the end-of-sequence token comes at position ``EOS_AT`` (or ``min_tokens``, if later) unless ``ignore_eos``. It
streams DELTA outputs with a short await before each token and honours ``max_tokens``, ``min_tokens``, stop strings
(held back while they may begin one, as vLLM does), ``stop_token_ids``, ``ignore_eos``, ``logprobs`` and
``abort``. Like vLLM's, it is bound to the event loop it first runs on. What it was asked is kept for the tests:
``requests`` (by request id) and ``aborted``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from transformers import AutoTokenizer

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.outputs import CompletionOutput, Logprob, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.usage.usage_lib import UsageContext

EOS_AT = 12
"""The output position of the end-of-sequence token (so an unbounded request ends with 13 tokens)."""
TOKEN_DELAY_S = 0.002
"""The await before each token: other requests and the reader run meanwhile."""


@dataclass
class Request:
    """One request as the stand-in saw it."""

    prompt_token_ids: list[int]
    params: SamplingParams
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    """"stop", "length", "abort" (by ``abort``) or "cancelled" (its generator was closed or cancelled)."""


class AsyncLLM:
    """Generates by rule; see the module docstring."""

    def __init__(self, engine_args: AsyncEngineArgs, usage_context: UsageContext) -> None:
        self.engine_args = engine_args
        self.usage_context = usage_context
        self.tokenizer = AutoTokenizer.from_pretrained(engine_args.tokenizer or engine_args.model)
        max_model_len = _max_model_len(Path(engine_args.model), engine_args.max_model_len)
        self.model_config = SimpleNamespace(model=engine_args.model, max_model_len=max_model_len)
        scheduler = SimpleNamespace(max_num_seqs=engine_args.max_num_seqs or 256)
        self.vllm_config = SimpleNamespace(model_config=self.model_config, scheduler_config=scheduler)
        self.requests: dict[str, Request] = {}
        self.aborted: list[str] = []
        self.is_shut_down = False
        self._loop = _running_loop()  # vLLM starts its output handler on a loop running now, else on first use
        self._eos = self.tokenizer.eos_token_id
        self._plain = _plain_tokens(self.tokenizer)

    @classmethod
    def from_engine_args(
        cls,
        engine_args: AsyncEngineArgs,
        start_engine_loop: bool = True,
        usage_context: UsageContext = UsageContext.ENGINE_CONTEXT,
        stat_loggers: Any = None,
    ) -> AsyncLLM:
        return cls(engine_args, usage_context)

    async def get_tokenizer(self) -> Any:
        return self.tokenizer

    async def abort(self, request_id: str | Iterable[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self.aborted.extend(ids)
        for rid in ids:
            request = self.requests.get(rid)
            if request is not None and request.finish_reason is None:
                request.finish_reason = "abort"

    def shutdown(self) -> None:
        self.is_shut_down = True

    async def generate(
        self, prompt: dict[str, Any], sampling_params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        request = self._add(prompt, sampling_params, request_id)
        text = _Text(self.tokenizer, sampling_params.stop or [])
        try:
            while request.finish_reason is None:
                await asyncio.sleep(TOKEN_DELAY_S)
                if request.finish_reason is None:  # not aborted meanwhile
                    yield self._output(request_id, request, *self._advance(request, text))
            if request.finish_reason == "abort":
                yield self._output(request_id, request, [], "", None)
        except (asyncio.CancelledError, GeneratorExit):
            if request.finish_reason is None:
                request.finish_reason = "cancelled"
            raise

    # -------------------------------------------------------------------------------------------------

    def _add(self, prompt: dict[str, Any], params: SamplingParams, request_id: str) -> Request:
        self._check_loop()
        if self.is_shut_down:
            raise RuntimeError("EngineDeadError: the engine was shut down")
        if params.output_kind is not RequestOutputKind.DELTA or params.n != 1:
            raise NotImplementedError("the stand-in streams one DELTA sequence per request only")
        if request_id in self.requests:
            raise ValueError(f"Request id {request_id} already running.")
        ids = list(prompt["prompt_token_ids"])
        limit = self.model_config.max_model_len
        if params.max_tokens is None or len(ids) + params.max_tokens > limit:
            raise ValueError(f"This model's maximum context length is {limit} tokens (max_tokens={params.max_tokens})")
        self.requests[request_id] = Request(ids, params)
        return self.requests[request_id]

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("AsyncLLM is bound to another event loop (where its output handler runs)")

    def _advance(self, request: Request, text: _Text) -> tuple[list[int], str, dict[int, Logprob] | None]:
        """One token: appended, its text (held back while it may begin a stop string), the finish reason set."""
        params = request.params
        token = self._token(request)
        request.token_ids.append(token)
        may_stop = len(request.token_ids) > params.min_tokens
        if token in params.stop_token_ids or (token == self._eos and not params.ignore_eos):
            request.finish_reason, delta = "stop", text.flush()  # the stop token's own text is not output
        else:
            delta, stopped = text.feed(token, may_stop)
            if stopped:
                request.finish_reason = "stop"
            elif len(request.token_ids) >= params.max_tokens:
                request.finish_reason, delta = "length", delta + text.flush()
        return [token], delta, self._logprobs(request, token)

    def _token(self, request: Request) -> int:
        params, i = request.params, len(request.token_ids)
        if not params.ignore_eos and i >= max(EOS_AT, params.min_tokens):
            return self._eos
        start = sum(request.prompt_token_ids) + 7 * i
        for k in range(len(self._plain)):  # vLLM masks stop tokens until min_tokens: the next plain one instead
            token = self._plain[(start + k) % len(self._plain)]
            if i >= params.min_tokens or token not in params.stop_token_ids:
                return token
        raise RuntimeError("every plain token is a stop token")

    def _logprobs(self, request: Request, token: int) -> dict[int, Logprob] | None:
        k = request.params.logprobs
        if k is None:
            return None
        entries = {token: Logprob(-0.25, 1, self.tokenizer.decode([token]))}
        start = sum(request.prompt_token_ids) + 100 + len(request.token_ids)
        alternatives = (t for t in self._plain[start % len(self._plain) :] + self._plain if t != token)
        for rank, alternative in zip(range(2, k + 1), alternatives, strict=False):
            entries[alternative] = Logprob(-float(rank), rank, self.tokenizer.decode([alternative]))
        return entries

    def _output(
        self, request_id: str, request: Request, token_ids: list[int], text: str, logprobs: dict | None
    ) -> RequestOutput:
        completion = CompletionOutput(
            index=0,
            text=text,
            token_ids=token_ids,
            cumulative_logprob=None,
            logprobs=None if logprobs is None else [logprobs],
            finish_reason=request.finish_reason,
        )
        finished = request.finish_reason is not None
        return RequestOutput(request_id, None, request.prompt_token_ids, [completion], finished)


class _Text:
    """A request's output text so far, handed out in deltas; held back while it may begin a stop string."""

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.ids: list[int] = []
        self.sent = 0

    def feed(self, token: int, may_stop: bool) -> tuple[str, bool]:
        self.ids.append(token)
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        found = [at for at in (full.find(stop) for stop in self.stops) if at >= 0] if may_stop else []
        if found:
            delta, self.sent = full[self.sent : min(found)], len(full)
            return delta, True
        hold = max((len(stop) - 1 for stop in self.stops), default=0)
        end = max(self.sent, len(full) - hold)
        delta, self.sent = full[self.sent : end], end
        return delta, False

    def flush(self) -> str:
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        delta, self.sent = full[self.sent :], len(full)
        return delta


def _plain_tokens(tokenizer: Any) -> list[int]:
    """Ids of tokens that decode alone to printable ASCII (so any sequence of them decodes piece by piece)."""
    special = set(tokenizer.all_special_ids)
    ids = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if token_id not in special and text.strip() and text.isascii() and text.isprintable():
            ids.append(token_id)
    return ids


def _max_model_len(model: Path, requested: int | None) -> int:
    config = model / "config.json" if model.is_dir() else None
    derived = json.loads(config.read_text()).get("max_position_embeddings", 2048) if config else 2048
    if requested is not None and requested > derived:
        raise ValueError(f"User-specified max_model_len ({requested}) is greater than the derived ({derived})")
    return requested or derived


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
