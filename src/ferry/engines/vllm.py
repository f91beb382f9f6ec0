"""The vllm engine: vLLM's own ``AsyncLLM`` behind the OpenAI side every LLM engine shares (``engines/generating.py``).

Picked for ``--engine vllm`` where vLLM imports and torch sees a GPU (``engines/loading.py``; else ferry's llm engine
serves it). Set up as ClearML-Serving sets it up: ``VLLM_ENGINE_ARGS`` (JSON) are the ``AsyncEngineArgs``, the
endpoint's aux config wins over them for ``dtype``, ``max_model_len``, ``max_num_seqs`` and ``device``, ``model`` is
the model path and ``served_model_name`` the endpoint.

Where it runs: ``AsyncLLM`` is built in the loading thread, where no event loop runs, so vLLM starts its output
handler on the first ``generate`` (its own rule), which runs on ferry's event loop like every other call of it: the
engine is bound to the loop that serves it, and building it (minutes) never stalls that loop. Its tokenizer renders
chat templates, encodes prompts and decodes echoes; it is fetched once, at load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import inspect
import logging
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from ferry.control.spec import EndpointSpec
from ferry.engines.base import Process
from ferry.engines.generating import ENGINE_ARG_KEYS, GeneratingEngine, StepQueue, user_settings, vllm_engine_args
from ferry.errors import EngineError, InvalidInput, Overloaded
from ferry.llm.params import SamplingParams, Step, TokenLogprob, TopLogprob

log = logging.getLogger(__name__)


class VLLMEngine(GeneratingEngine):
    """One loaded LLM version on vLLM's ``AsyncLLM``: each choice one ``generate`` with DELTA outputs."""

    def __init__(self, spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> None:
        settings = user_settings(loaded)
        super().__init__(spec, settings)
        if model_path is None:
            raise EngineError(f"endpoint {spec.key}: the {spec.engine} engine needs a model (--model-id or --name)")
        started = time.monotonic()
        self.vllm = _import_vllm()
        self.engine_args = _engine_args(self.vllm, spec, engine_config(spec, Path(model_path)))
        self.engine = self.vllm.AsyncLLM.from_engine_args(
            self.engine_args, usage_context=self.vllm.UsageContext.OPENAI_API_SERVER
        )
        try:
            self.tokenizer = _resolved(self.engine.get_tokenizer())
            self.max_model_len = int(self.engine.model_config.max_model_len)
            self.max_num_seqs = int(self.engine.vllm_config.scheduler_config.max_num_seqs)
        except BaseException:
            self.engine.shutdown()
            raise
        template = spec.aux_config.get("chat_template") or settings.get("chat_template")
        self.chat_template: str | None = template or getattr(self.tokenizer, "chat_template", None)
        self.max_waiting = int(spec.aux_config.get("max_waiting", 256))
        self.in_flight = 0
        """Sequences started and not yet ended (vLLM runs up to ``max_num_seqs`` of them; the rest wait)."""
        self._closed = False
        log.info(
            "endpoint %s: loaded %s with vLLM's engine in %.1f s; max_model_len %d, max_num_seqs %d",
            spec.key,
            Path(model_path).name,
            time.monotonic() - started,
            self.max_model_len,
            self.max_num_seqs,
        )

    # prompts ----------------------------------------------------------------------------------------

    def render_chat(self, messages: list[dict]) -> list[int]:
        if self.chat_template is None:
            raise ValueError(
                "this model has no chat template (its tokenizer has none): give one with the chat template option"
            )
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(
                messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
            )
        except TemplateError as exc:
            raise ValueError(f"the chat template could not render these messages: {exc}") from exc
        # The template writes the special tokens itself, as in vLLM's OpenAI server.
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    # sequences --------------------------------------------------------------------------------------

    def _start(self, prompt_ids: list[int], params: SamplingParams, queue: StepQueue, index: int) -> _Running:
        self._admit()
        sampling = self._sampling_params(prompt_ids, params)
        request_id = f"ferry-{uuid.uuid4().hex}"
        task = asyncio.get_running_loop().create_task(self._sequence(prompt_ids, sampling, request_id, queue, index))
        self.in_flight += 1
        task.add_done_callback(self._left)  # also when cancelled before it ran
        return _Running(request_id, task)

    def _abort(self, handle: _Running) -> None:
        handle.task.cancel()  # the task then aborts its request in vLLM

    def _left(self, task: asyncio.Task) -> None:
        self.in_flight -= 1

    def counts(self) -> tuple[int, int]:
        running = min(self.in_flight, self.max_num_seqs)
        return running, self.in_flight - running

    def _admit(self) -> None:
        if self._closed:
            raise EngineError(f"endpoint {self.key}: the model was unloaded; retry", endpoint=self.key)
        running, waiting = self.counts()
        if running >= self.max_num_seqs and waiting >= self.max_waiting:
            raise Overloaded(
                f"endpoint {self.key}: {waiting} sequences wait already (aux config max_waiting={self.max_waiting}, "
                f"max_num_seqs={self.max_num_seqs}); retry later",
                endpoint=self.key,
            )

    def _sampling_params(self, prompt_ids: list[int], params: SamplingParams) -> Any:
        """vLLM's SamplingParams for one choice; without max_tokens, up to the context limit (as vLLM's server)."""
        if getattr(params, "response_format", None):  # ferry's grammar field; vLLM's guided decoding differs by release
            raise InvalidInput(
                f"endpoint {self.key}: response_format json_object and json_schema are not supported by the vllm "
                "engine yet; send it without response_format, or serve the model with --engine llm",
                param="response_format",
            )
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len - len(prompt_ids)
        try:
            return self.vllm.SamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k or -1,
                min_p=params.min_p,
                seed=params.seed,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                repetition_penalty=params.repetition_penalty,
                max_tokens=max_tokens,
                min_tokens=params.min_tokens,
                stop=list(params.stop),
                stop_token_ids=list(params.stop_token_ids),
                ignore_eos=params.ignore_eos,
                logprobs=params.logprobs,
                output_kind=self.vllm.RequestOutputKind.DELTA,
            )
        except ValueError as exc:
            raise InvalidInput(f"endpoint {self.key}: vLLM refused the sampling parameters: {exc}") from None

    async def _sequence(
        self, prompt_ids: list[int], sampling: Any, request_id: str, queue: StepQueue, index: int
    ) -> None:
        """Run one ``generate`` to its end, each output a Step on ``queue``; aborted in vLLM when cancelled."""
        generated, ended = 0, False
        try:
            async for output in self.engine.generate({"prompt_token_ids": prompt_ids}, sampling, request_id):
                completion = output.outputs[0]
                generated += len(completion.token_ids)
                ended = completion.finish_reason is not None
                queue.put_nowait((index, self._step(completion, sampling.logprobs, len(prompt_ids), generated)))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # an engine already shut down has nothing left to free
                await self.engine.abort(request_id)  # the client went away: its slot frees now
            raise
        except Exception as exc:
            queue.put_nowait((index, self._failure(exc)))
            return
        if not ended:  # the engine stopped under it (shut down)
            queue.put_nowait((index, Step(finish_reason="abort", prompt_tokens=len(prompt_ids))))

    def _failure(self, exc: Exception) -> Exception:
        if isinstance(exc, ValueError):  # vLLM's own check of a request (VLLMValidationError), as its server: 400
            return InvalidInput(f"endpoint {self.key}: vLLM refused the request: {exc}")
        return EngineError(f"endpoint {self.key}: vLLM failed: {type(exc).__name__}: {exc}", endpoint=self.key)

    def _step(self, completion: Any, logprobs: int | None, prompt_tokens: int, generated: int) -> Step:
        token_ids = list(completion.token_ids)
        return Step(
            text=completion.text,
            token_ids=token_ids,
            logprobs=None if logprobs is None else self._logprobs(token_ids, completion.logprobs, logprobs),
            finish_reason=completion.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=generated,
        )

    def _logprobs(self, token_ids: list[int], positions: Any, k: int) -> list[TokenLogprob] | None:
        """vLLM's per-token ``{token id: Logprob}`` (the chosen token's and the top k by rank) as ferry's."""
        if positions is None:
            return None
        result = []
        for token_id, entries in zip(token_ids, positions, strict=False):
            ranked = sorted((entry.rank, tid) for tid, entry in entries.items() if 0 < (entry.rank or 0) <= k)
            top = tuple(TopLogprob(tid, self._token_text(tid, entries[tid]), entries[tid].logprob) for _, tid in ranked)
            chosen = entries.get(token_id)
            logprob = chosen.logprob if chosen is not None else float("-inf")
            result.append(TokenLogprob(token_id, self._token_text(token_id, chosen), logprob, top[:k]))
        return result

    def _token_text(self, token_id: int, entry: Any) -> str:
        text = getattr(entry, "decoded_token", None)
        return text if text is not None else self.tokenizer.decode([token_id])

    def close(self) -> None:
        """Shut vLLM's engine down (its engine core process and GPU memory); new sequences are refused."""
        self._closed = True
        self.engine.shutdown()


class _Running(NamedTuple):
    request_id: str
    task: asyncio.Task


class _VLLM(NamedTuple):
    """The parts of vLLM this engine uses, imported when a version loads (vLLM imports in seconds)."""

    AsyncEngineArgs: Any
    AsyncLLM: Any
    SamplingParams: Any
    RequestOutputKind: Any
    UsageContext: Any


def _import_vllm() -> _VLLM:
    def part(module: str, name: str) -> Any:
        return getattr(importlib.import_module(module), name)  # by name: vLLM is an optional, untyped import

    return _VLLM(
        AsyncEngineArgs=part("vllm.engine.arg_utils", "AsyncEngineArgs"),
        AsyncLLM=part("vllm.v1.engine.async_llm", "AsyncLLM"),
        SamplingParams=part("vllm", "SamplingParams"),
        RequestOutputKind=part("vllm.sampling_params", "RequestOutputKind"),
        UsageContext=part("vllm.usage.usage_lib", "UsageContext"),
    )


def engine_config(spec: EndpointSpec, model_path: Path) -> dict[str, Any]:
    """The ``AsyncEngineArgs`` keywords of one endpoint version: VLLM_ENGINE_ARGS, the aux config's engine keys over
    them, then ``model`` and ``served_model_name`` (as ClearML sets them)."""
    config = vllm_engine_args(spec)
    config.update({key: spec.aux_config[key] for key in ENGINE_ARG_KEYS if spec.aux_config.get(key) is not None})
    config["model"] = str(_model_file(model_path))
    config["served_model_name"] = spec.key
    return config


def _engine_args(vllm: _VLLM, spec: EndpointSpec, config: dict[str, Any]) -> Any:
    try:
        return vllm.AsyncEngineArgs(**config)
    except TypeError as exc:  # a key this vLLM does not know
        raise EngineError(
            f"endpoint {spec.key}: vLLM refused its engine arguments ({exc}); they come from VLLM_ENGINE_ARGS and "
            f"the aux config keys {', '.join(ENGINE_ARG_KEYS)}",
            endpoint=spec.key,
        ) from None


def _model_file(path: Path) -> Path:
    """The path vLLM loads: a Hugging Face folder or a .gguf file as given; a folder holding only one .gguf file
    (no config.json), that file."""
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
    return path


def _resolved(value: Any) -> Any:
    """``value``, or what it resolves to when it is awaitable (older vLLM's ``get_tokenizer`` is a coroutine): run
    on a temporary event loop in a thread of its own, so that no loop of the caller's is touched or needed."""
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ferry-vllm-load") as pool:
        return pool.submit(asyncio.run, wait()).result()
