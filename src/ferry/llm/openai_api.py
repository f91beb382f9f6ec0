"""OpenAI request bodies checked and turned into generation requests (the answers: ``openai_answers``).

Nothing here knows HTTP or a model: ferry's OpenAI routes and ``send_request`` call in with parsed JSON; errors
are ``InvalidRequest`` naming the field, shaped as the OpenAI API reference (and vLLM's OpenAI server for its
extras).

Every body field is HONOURED, ACCEPTED WITHOUT EFFECT (it changes nothing; its name is kept in
``accepted_without_effect`` for the log) or REFUSED with ``InvalidRequest`` naming it. A known field sent as
``null`` is the same as one left out. Any other field: ``InvalidRequest("unknown field X")``.

/chat/completions and /completions, honoured:

- ``model`` (required), ``stream``, ``n`` (1..16), ``temperature`` (0..2, default 1), ``top_p`` (above 0, at most 1),
  ``seed`` (64-bit), ``stop`` (a string or a list of up to 4 non-empty strings), ``presence_penalty`` and
  ``frequency_penalty`` (-2..2), ``max_tokens`` (at least 1);
- ``stream_options`` with only ``include_usage`` (only with ``stream`` true): a last chunk carries the usage;
- vLLM's extras: ``top_k`` (-1 or 0: off), ``min_p`` (0..1), ``min_tokens`` (at most max_tokens),
  ``ignore_eos``, ``repetition_penalty`` (above 0), ``stop_token_ids``.

Chat only, honoured: ``messages`` (below), ``max_completion_tokens`` (wins over ``max_tokens`` when both are sent,
as in vLLM), ``logprobs`` (bool) with ``top_logprobs`` (0..20; refused without ``logprobs`` true), and
``response_format`` ``{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`` (``name``
and ``schema``, an object, required) or ``{"type": "json_object"}`` (any JSON object): constrained decoding with
llguidance (``llm/grammar.py``) makes the answer JSON that the schema accepts, written without whitespace, ending
with finish_reason "stop" where the JSON is complete (unless ``max_tokens`` or a stop string cut it first). The
schema is enforced whether ``strict`` is true or not. A schema llguidance cannot honour is refused naming the problem,
and so is either type on a server without llguidance (the message says ``pip install llguidance``).
Completions only, honoured: ``prompt`` (a string, a list of strings, a list of token ids or a list of lists of
token ids; none empty), ``logprobs`` (0..20: the chosen token's and the top k), ``echo`` (the prompt is put before
each answer; refused together with ``logprobs``, as prompt log-probabilities are not computed).

Accepted without effect: ``user`` (also kept on the request for the log), ``logit_bias`` only empty,
``skip_special_tokens`` only true (ferry's decoder always skips special tokens), ``include_stop_str_in_output``
only false. Chat also: ``store``, ``metadata``, ``parallel_tool_calls``, ``service_tier``, ``tools`` only empty,
``tool_choice`` only "none", ``response_format`` ``{"type": "text"}``, ``modalities`` only ["text"].
Completions also: ``best_of`` only 1.

Refused: any other value of the fields just named (``response_format`` of another type or shape), and
``functions``, ``function_call``, ``audio``, ``prediction``, ``web_search_options`` (chat), ``suffix`` (completions).

``messages``: a non-empty list of objects with a role among system, developer (kept as "system"), user, assistant
and tool, and a ``content`` that is a string or a list of ``{"type": "text", "text": ...}`` parts, joined with ""
in order (vLLM joins them with "\\n"); an assistant's may be null (kept as ""). ``name`` and ``tool_call_id`` are
accepted without effect, as are an assistant's null ``refusal``, ``audio``, ``function_call`` and ``tool_calls``
and its ``annotations``; an assistant's ``tool_calls`` are refused, and so are image, audio and file parts.

/embeddings: ``model``, ``input`` (a non-empty string or list of non-empty strings; token ids refused),
``encoding_format`` ("float" or "base64": little-endian float32 bytes, as OpenAI sends), ``user``; ``dimensions``
refused unless null.

Answers: usage counts each prompt's tokens once however many choices it has (as OpenAI does) and sums the
generated tokens. A sequence ended by an abort has finish_reason "abort" in answers and chunks alike, as vLLM
sends (the official client reads it as a plain string). Log-probabilities of -inf are sent as -9999.0 (JSON has no
infinity), as vLLM does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from ferry.llm import grammar
from ferry.llm.openai_fields import (
    CHAT_RULES,
    COMPLETION_RULES,
    InvalidRequest,
    apply_rules,
    boolean,
    error_body,
    json_object,
    known_fields,
    model_name,
    number,
    show,
    user_field,
)
from ferry.llm.openai_messages import parse_messages
from ferry.llm.params import SamplingParams

__all__ = [  # InvalidRequest and error_body are part of this module's face: the routes import them from here
    "EmbeddingRequest",
    "GenerationRequest",
    "InvalidRequest",
    "error_body",
    "parse_chat",
    "parse_completion",
    "parse_embeddings",
]

MAX_N = 16
"""The most choices one request may ask for (``n``)."""
MAX_LOGPROBS = 20
"""The most alternatives per token (chat ``top_logprobs``, completions ``logprobs``)."""
MAX_STOP = 4
"""The most stop strings, as OpenAI allows."""
_INT64 = (-(2**63), 2**63 - 1)

# ---- sampling parameters ---------------------------------------------------------------------------------------

# One line per group beats ruff's one name per line.
_SAMPLING_FIELDS = (  # noqa: SIM905
    "model stream stream_options n max_tokens temperature top_p seed stop presence_penalty frequency_penalty "
    "logprobs top_k min_p min_tokens ignore_eos repetition_penalty stop_token_ids"
).split()


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_STOP or not all(isinstance(s, str) and s for s in items):
        raise InvalidRequest(
            f"stop must be a non-empty string or a list of up to {MAX_STOP} non-empty strings, got {show(value)}",
            "stop",
        )
    return tuple(items)


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


def _stop_token_ids(body: dict[str, Any]) -> tuple[int, ...]:
    value = body.get("stop_token_ids")
    if value is None:
        return ()
    if not _token_ids(value):
        raise InvalidRequest(
            f"stop_token_ids must be a list of token ids (integers >= 0), got {show(value)}", "stop_token_ids"
        )
    return tuple(value)


def _top_k(body: dict[str, Any]) -> int:
    value = number(body, "top_k", 0, integer=True)
    if value < -1:
        raise InvalidRequest(f"top_k must be -1 or 0 (off) or at least 1, got {value}", "top_k")
    return max(value, 0)


def _min_tokens(body: dict[str, Any], max_tokens: int | None) -> int:
    value = number(body, "min_tokens", 0, 0, integer=True)
    if max_tokens is not None and value > max_tokens:
        raise InvalidRequest(f"min_tokens must be at most max_tokens ({max_tokens}), got {value}", "min_tokens")
    return value


def _sampling(
    body: dict[str, Any], max_tokens: int | None, logprobs: int | None, response_format: str | None = None
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        min_tokens=_min_tokens(body, max_tokens),
        temperature=number(body, "temperature", 1.0, 0, 2),
        top_p=number(body, "top_p", 1.0, 0, 1, lo_open=True),
        top_k=_top_k(body),
        min_p=number(body, "min_p", 0.0, 0, 1),
        seed=number(body, "seed", None, *_INT64, integer=True),
        presence_penalty=number(body, "presence_penalty", 0.0, -2, 2),
        frequency_penalty=number(body, "frequency_penalty", 0.0, -2, 2),
        repetition_penalty=number(body, "repetition_penalty", 1.0, 0, lo_open=True),
        stop=_stop(body),
        stop_token_ids=_stop_token_ids(body),
        ignore_eos=boolean(body, "ignore_eos"),
        logprobs=logprobs,
        response_format=response_format,
    )


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise InvalidRequest("stream_options is only allowed when stream is true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InvalidRequest(f'stream_options may only hold "include_usage", got {show(options)}', "stream_options")
    return boolean(options, "include_usage")


# ---- response_format -----------------------------------------------------------------------------------------

_FORMAT_SHAPE = (
    'response_format must be {"type": "text"}, {"type": "json_object"} or '
    '{"type": "json_schema", "json_schema": {"name": "...", "schema": {...}}}'
)
_JSON_SCHEMA_FIELDS = frozenset(["name", "schema", "strict", "description"])
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _response_format(body: dict[str, Any]) -> str | None:
    """``response_format`` json_object or json_schema as compact JSON text (for ``SamplingParams``), its schema
    checked by llguidance; None when absent or ``{"type": "text"}``."""
    value = body.get("response_format")
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text" and len(value) == 1:
        return None
    if kind == "json_object" and len(value) == 1:
        return _honoured_format(value)
    if kind == "json_schema" and set(value) == {"type", "json_schema"}:
        _json_schema(value["json_schema"])
        return _honoured_format(value)
    raise InvalidRequest(f"{_FORMAT_SHAPE}, got {show(value)}", "response_format")


def _json_schema(value: Any) -> None:
    where = "response_format.json_schema"
    value = json_object(value, where)
    for name in value:
        if name not in _JSON_SCHEMA_FIELDS:
            raise InvalidRequest(f"unknown field {name!r} in {where}", f"{where}.{name}")
    name = value.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise InvalidRequest(f"{where}.name must be 1 to 64 letters, digits, _ or -, got {show(name)}", f"{where}.name")
    if not isinstance(value.get("schema"), dict):
        raise InvalidRequest(
            f"{where}.schema must be a JSON schema object, got {show(value.get('schema'))}", f"{where}.schema"
        )
    if value.get("strict") is not None and not isinstance(value["strict"], bool):
        raise InvalidRequest(f"{where}.strict must be true or false, got {show(value['strict'])}", f"{where}.strict")
    if value.get("description") is not None and not isinstance(value["description"], str):
        raise InvalidRequest(f"{where}.description must be a string", f"{where}.description")


def _honoured_format(value: dict[str, Any]) -> str:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        grammar.check(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc), "response_format") from None
    return text


# ---- requests --------------------------------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    """A checked /chat/completions or /completions body: what to generate, how, and how to answer."""

    kind: Literal["chat", "completion"]
    model: str
    messages: list[dict[str, Any]] | None
    """Chat: ``[{"role", "content": str}]``, text parts joined with "" in order, "developer" kept as "system"."""
    prompts: list[str | list[int]]
    """Completions: one per prompt (a string or token ids); [] for chat."""
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    """``stream_options.include_usage``: end the stream with a chunk that holds the usage."""
    echo: bool
    """Completions only: put the prompt before each answer's text."""
    user: str | None
    accepted_without_effect: tuple[str, ...]
    """The names of the fields present in the body that are accepted without effect (for the log)."""


_CHAT_FIELDS = frozenset(
    [*_SAMPLING_FIELDS, "messages", "max_completion_tokens", "top_logprobs", "response_format", *CHAT_RULES]
)
_COMPLETION_FIELDS = frozenset([*_SAMPLING_FIELDS, "prompt", "echo", *COMPLETION_RULES])


def parse_chat(body: Any) -> GenerationRequest:
    """A /chat/completions body checked field by field (see the module docstring); InvalidRequest names the field."""
    body = json_object(body)
    known_fields(body, _CHAT_FIELDS)
    accepted = apply_rules(body, CHAT_RULES)
    model = model_name(body)
    messages = parse_messages(body.get("messages"))
    legacy_max = number(body, "max_tokens", None, 1, integer=True)
    max_tokens = number(body, "max_completion_tokens", legacy_max, 1, integer=True)
    response_format = _response_format(body)
    if response_format is None and body.get("response_format") is not None:
        accepted += ("response_format",)  # {"type": "text"}
    params = _sampling(body, max_tokens, _chat_logprobs(body), response_format)
    stream = boolean(body, "stream")
    return GenerationRequest(
        kind="chat",
        model=model,
        messages=messages,
        prompts=[],
        params=params,
        n=number(body, "n", 1, 1, MAX_N, integer=True),
        stream=stream,
        include_usage=_include_usage(body, stream),
        echo=False,
        user=user_field(body),
        accepted_without_effect=accepted,
    )


def parse_completion(body: Any) -> GenerationRequest:
    """A /completions body checked field by field (see the module docstring); InvalidRequest names the field."""
    body = json_object(body)
    known_fields(body, _COMPLETION_FIELDS)
    accepted = apply_rules(body, COMPLETION_RULES)
    model = model_name(body)
    prompts = _prompts(body.get("prompt"))
    logprobs = number(body, "logprobs", None, 0, MAX_LOGPROBS, integer=True)
    echo = boolean(body, "echo")
    if echo and logprobs is not None:
        raise InvalidRequest("echo together with logprobs is not supported yet", "echo")
    params = _sampling(body, number(body, "max_tokens", None, 1, integer=True), logprobs)
    stream = boolean(body, "stream")
    return GenerationRequest(
        kind="completion",
        model=model,
        messages=None,
        prompts=prompts,
        params=params,
        n=number(body, "n", 1, 1, MAX_N, integer=True),
        stream=stream,
        include_usage=_include_usage(body, stream),
        echo=echo,
        user=user_field(body),
        accepted_without_effect=accepted,
    )


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    wanted = boolean(body, "logprobs")
    top = number(body, "top_logprobs", None, 0, MAX_LOGPROBS, integer=True)
    if top is not None and not wanted:
        raise InvalidRequest("top_logprobs needs logprobs set to true", "top_logprobs")
    return (top or 0) if wanted else None


def _prompts(value: Any) -> list[str | list[int]]:
    shape = "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(value, str) or (_token_ids(value) and value):
        items = [value]
    elif isinstance(value, list) and (all(isinstance(p, str) for p in value) or all(_token_ids(p) for p in value)):
        items = value
    else:
        raise InvalidRequest(f"{shape}, got {show(value)}", "prompt")
    if not items or not all(items):
        raise InvalidRequest(f"prompt must not be empty (nor any of its prompts), got {show(value)}", "prompt")
    return items


# ---- embeddings ------------------------------------------------------------------------------------------------


@dataclass
class EmbeddingRequest:
    """A checked /embeddings body."""

    model: str
    inputs: list[str]
    encoding_format: Literal["float", "base64"]
    dimensions: int | None
    """Always None: any other value is refused."""
    user: str | None


_EMBEDDING_FIELDS = frozenset(["model", "input", "encoding_format", "dimensions", "user"])


def parse_embeddings(body: Any) -> EmbeddingRequest:
    """An /embeddings body checked field by field (see the module docstring); InvalidRequest names the field."""
    body = json_object(body)
    known_fields(body, _EMBEDDING_FIELDS)
    model = model_name(body)
    inputs = _embedding_inputs(body.get("input"))
    sent = body.get("encoding_format")
    if sent not in (None, "float", "base64"):
        raise InvalidRequest(f'encoding_format must be "float" or "base64", got {show(sent)}', "encoding_format")
    encoding: Literal["float", "base64"] = "base64" if sent == "base64" else "float"
    if body.get("dimensions") is not None:
        raise InvalidRequest("dimensions is not supported yet", "dimensions")
    return EmbeddingRequest(
        model=model, inputs=inputs, encoding_format=encoding, dimensions=None, user=user_field(body)
    )


def _embedding_inputs(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list) and items and all(isinstance(x, str) and x for x in items):
        return items
    if isinstance(items, list) and items and (_token_ids(items) or all(_token_ids(x) for x in items)):
        raise InvalidRequest("token-id inputs are not supported; send text", "input")
    raise InvalidRequest(f"input must be a non-empty string or a list of non-empty strings, got {show(value)}", "input")
