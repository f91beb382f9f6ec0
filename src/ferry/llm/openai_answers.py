"""OpenAI's answers, stream chunks, model cards and embeddings lists, built from finished choices and steps (plain
dicts the official ``openai`` client parses; vLLM's ``finish_reason`` "abort" passes through)."""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from ferry.llm.params import Step, TokenLogprob

_LOGPROB_FLOOR = -9999.0
"""What a log-probability of -inf is sent as (JSON has no infinity), as vLLM sends it."""


# ---- answers ---------------------------------------------------------------------------------------------------


@dataclass
class Choice:
    """One finished sequence, as a non-streamed answer reports it."""

    text: str
    finish_reason: str
    """"stop", "length" or "abort"."""
    logprobs: list[TokenLogprob] | None
    prompt_tokens: int
    completion_tokens: int


def new_id(kind: str) -> str:
    """A fresh answer id: "chatcmpl-<hex>" for kind "chat", "cmpl-<hex>" for "completion"."""
    prefixes = {"chat": "chatcmpl", "completion": "cmpl"}
    if kind not in prefixes:
        raise ValueError(f"kind must be 'chat' or 'completion', got {kind!r}")
    return f"{prefixes[kind]}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _logprob(value: float) -> float:
    return value if value >= _LOGPROB_FLOOR else _LOGPROB_FLOOR  # -inf and nan are no JSON


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def _chat_logprobs_body(logprobs: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": _logprob(lp.logprob),
                "bytes": _token_bytes(lp.token),
                "top_logprobs": [
                    {"token": t.token, "logprob": _logprob(t.logprob), "bytes": _token_bytes(t.token)} for t in lp.top
                ],
            }
            for lp in logprobs
        ]
    }


def _completion_logprobs_body(logprobs: list[TokenLogprob], offset: int) -> tuple[dict[str, Any], int]:
    """The legacy logprobs object (the chosen token is always among ``top_logprobs``) and the offset after it."""
    body: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for lp in logprobs:
        top = {t.token: _logprob(t.logprob) for t in lp.top}
        top.setdefault(lp.token, _logprob(lp.logprob))
        body["tokens"].append(lp.token)
        body["token_logprobs"].append(_logprob(lp.logprob))
        body["top_logprobs"].append(top)
        body["text_offset"].append(offset)
        offset += len(lp.token)
    return body, offset


def chat_answer(id_: str, created: int, model: str, choices: list[Choice], role: str = "assistant") -> dict[str, Any]:
    """A "chat.completion" answer; all choices answer the one prompt (its tokens are counted once)."""
    answers = [
        {
            "index": i,
            "message": {"role": role, "content": choice.text},
            "logprobs": None if choice.logprobs is None else _chat_logprobs_body(choice.logprobs),
            "finish_reason": choice.finish_reason,
        }
        for i, choice in enumerate(choices)
    ]
    prompt_tokens = choices[0].prompt_tokens if choices else 0
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": answers,
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


def completion_answer(
    id_: str,
    created: int,
    model: str,
    choices: list[Choice],
    echo_prompts: list[str] | None = None,
    n: int | None = None,
) -> dict[str, Any]:
    """A "text_completion" answer. ``choices`` go prompt by prompt, ``n`` each: choice i answers prompt i // n.

    ``echo_prompts`` (the prompts' text, one per prompt) is put before each choice's text when the request echoes.
    ``n`` None: found from ``echo_prompts`` when given, else 1; pass the request's ``n`` so that usage counts each
    prompt's tokens once.
    """
    if n is None:
        n = len(choices) // len(echo_prompts) if echo_prompts else 1
    if n < 1 or len(choices) % n or (echo_prompts is not None and len(echo_prompts) * n != len(choices)):
        raise ValueError(f"{len(choices)} choices are not n={n} per prompt")
    answers = []
    for i, choice in enumerate(choices):
        prefix = echo_prompts[i // n] if echo_prompts is not None else ""
        logprobs = None
        if choice.logprobs is not None:
            logprobs, _ = _completion_logprobs_body(choice.logprobs, len(prefix))
        answers.append(
            {"index": i, "text": prefix + choice.text, "logprobs": logprobs, "finish_reason": choice.finish_reason}
        )
    prompt_tokens = sum(c.prompt_tokens for c in choices[::n])
    return {
        "id": id_,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": answers,
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


class _Chunks:
    """The fields every chunk of one streamed answer shares."""

    object_ = ""

    def __init__(self, id_: str, created: int, model: str) -> None:
        self.id = id_
        self.created = created
        self.model = model

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": self.object_, "created": self.created, "model": self.model, "choices": choices}

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """The last chunk when the request asked ``stream_options.include_usage``: no choices, the whole usage."""
        return {**self._chunk([]), "usage": usage(prompt_tokens, completion_tokens)}


class ChatChunks(_Chunks):
    """One streamed chat answer's "chat.completion.chunk" dicts, one per call."""

    object_ = "chat.completion.chunk"

    def __init__(self, id_: str, created: int, model: str, role: str = "assistant") -> None:
        super().__init__(id_, created, model)
        self.role_name = role

    def role(self, index: int) -> dict[str, Any]:
        """The first chunk of choice ``index``: the role and empty content."""
        delta = {"role": self.role_name, "content": ""}
        return self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    def delta(self, index: int, step: Step) -> dict[str, Any] | None:
        """One Step of choice ``index`` (its text, log-probabilities, finish reason); None when it has none."""
        if not step.text and not step.logprobs and step.finish_reason is None:
            return None
        choice = {
            "index": index,
            "delta": {"content": step.text} if step.text else {},
            "logprobs": _chat_logprobs_body(step.logprobs) if step.logprobs else None,
            "finish_reason": step.finish_reason,
        }
        return self._chunk([choice])


class CompletionChunks(_Chunks):
    """One streamed completions answer's "text_completion" dicts, one per call."""

    object_ = "text_completion"

    def __init__(self, id_: str, created: int, model: str) -> None:
        super().__init__(id_, created, model)
        self._offsets: dict[int, int] = {}

    def echo(self, index: int, prompt: str) -> dict[str, Any]:
        """The first chunk of choice ``index`` when the request echoes: the prompt's text."""
        self._offsets[index] = self._offsets.get(index, 0) + len(prompt)
        return self._chunk([{"index": index, "text": prompt, "logprobs": None, "finish_reason": None}])

    def delta(self, index: int, step: Step) -> dict[str, Any] | None:
        """One Step of choice ``index`` (its text, log-probabilities, finish reason); None when it has none."""
        if not step.text and not step.logprobs and step.finish_reason is None:
            return None
        logprobs = None
        if step.logprobs:
            logprobs, self._offsets[index] = _completion_logprobs_body(step.logprobs, self._offsets.get(index, 0))
        choice = {"index": index, "text": step.text, "logprobs": logprobs, "finish_reason": step.finish_reason}
        return self._chunk([choice])


def model_card(id_: str, created: int, owned_by: str) -> dict[str, Any]:
    """One model as /models lists it."""
    return {"id": id_, "object": "model", "created": created, "owned_by": owned_by}


def models_list(models: list[tuple[str, int, str]]) -> dict[str, Any]:
    """The /models answer from (id, created, owned_by) triples."""
    return {"object": "list", "data": [model_card(*model) for model in models]}


def embeddings_answer(
    model: str, vectors: list[list[float]], encoding_format: str, prompt_tokens: int
) -> dict[str, Any]:
    """The /embeddings answer; "base64" sends each vector as its little-endian float32 bytes, as OpenAI does."""
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(vector, encoding_format)}
        for i, vector in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return [float(x) for x in vector]
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    raise ValueError(f"encoding_format must be 'float' or 'base64', got {encoding_format!r}")
