"""The OpenAI routes in /openapi.json: their paths, bodies and answers (the shapes ``llm/openai_api.py`` checks)."""

from __future__ import annotations

from typing import Any

PREFIX = "/serve/openai/v1"
OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "description": "invalid_request_error, not_found_error or server_error"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}
SAMPLING = {
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 16},
    "seed": {"type": ["integer", "null"]},
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
    "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "user": {"type": ["string", "null"]},
    "top_k": {"type": ["integer", "null"], "minimum": -1},
    "min_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "min_tokens": {"type": ["integer", "null"], "minimum": 0},
    "ignore_eos": {"type": ["boolean", "null"]},
    "repetition_penalty": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 2},
}
MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [
                {"type": "string"},
                {"type": "null"},
                {
                    "type": "array",
                    "items": {"type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}}},
                },
            ]
        },
    },
}
CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "description": "an LLM endpoint: name or name/version (GET models lists them)"},
        "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
        "logprobs": {"type": ["boolean", "null"]},
        "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
        "response_format": {
            "type": ["object", "null"],
            "description": 'text, json_object, or json_schema ({"name", "schema"}): the answer follows the schema',
            "properties": {"type": {"enum": ["text", "json_object", "json_schema"]}},
        },
        **SAMPLING,
    },
}
COMPLETION_REQUEST = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": CHAT_REQUEST["properties"]["model"],  # type: ignore[index]
        "prompt": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                {"type": "array", "items": {"type": "integer", "minimum": 0}},
            ]
        },
        "echo": {"type": ["boolean", "null"]},
        "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
        **SAMPLING,
    },
}
EMBEDDINGS_REQUEST = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "description": "an endpoint added with --aux-config openai=embeddings"},
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "encoding_format": {"enum": ["float", "base64"]},
        "user": {"type": ["string", "null"]},
    },
}
ANSWER = {"type": "object", "description": "OpenAI's answer; with stream: server-sent events ending in [DONE]"}
STATUSES = {
    "400": "a field is invalid, unknown or not supported (the message names it), or the prompt is too long",
    "404": "no LLM endpoint of that name",
    "422": "the endpoint's Preprocess code refused the request",
    "500": "ferry failed; the message carries an id to find the details in the server log",
    "503": "the endpoint is loading, or max_waiting sequences wait: retry after Retry-After seconds",
    "504": "no answer (or no next token) within the endpoint's request timeout",
}


def openai_paths(models: list[str], embedders: list[str]) -> dict[str, Any]:
    """The paths of the OpenAI face; ``models`` (the LLM endpoints) and ``embedders`` (the embeddings endpoints)
    are given as examples of ``model``."""
    chat, completion, embeddings = (_with_models(body, names) for body, names in (
        (CHAT_REQUEST, models), (COMPLETION_REQUEST, models), (EMBEDDINGS_REQUEST, embedders)
    ))  # fmt: skip
    return {
        f"{PREFIX}/models": {"get": _operation("the LLM endpoints (OpenAI: list models)", None, ANSWER)},
        f"{PREFIX}/models/{{model}}": {
            "get": {
                **_operation("one LLM endpoint (OpenAI: retrieve model)", None, ANSWER),
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            }
        },
        f"{PREFIX}/chat/completions": {"post": _operation("chat with an LLM endpoint", chat, ANSWER)},
        f"{PREFIX}/completions": {"post": _operation("complete a prompt", completion, ANSWER)},
        f"{PREFIX}/embeddings": {"post": _operation("embed texts", embeddings, ANSWER)},
    }


def _with_models(body: dict[str, Any], names: list[str]) -> dict[str, Any]:
    if not names:
        return body
    model = {**body["properties"]["model"], "examples": names}
    return {**body, "properties": {**body["properties"], "model": model}}


def _operation(summary: str, body: dict[str, Any] | None, answer: dict[str, Any]) -> dict[str, Any]:
    errors = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {
                "description": "the answer (JSON), or its chunks as text/event-stream when the body says stream",
                "content": {
                    "application/json": {"schema": answer},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            **{status: {"description": text, "content": errors} for status, text in STATUSES.items()},
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation
