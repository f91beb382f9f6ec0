"""The OpenAI API under /serve/openai/v1: models, chat completions and completions of the LLM endpoints.

``model`` in a body names an endpoint (``name`` or ``name/version``; a canary splits by its weights). Errors
come in OpenAI's body (``{"error": {"message", "type", "param", "code"}}``). A streamed answer goes out as
server-sent events, one ``data:`` line per chunk, then ``data: [DONE]``; a client that goes away ends its
sequences at the next decoding step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from ferry.errors import (
    FerryError,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    UserCodeError,
    strip_paths,
)
from ferry.llm.openai_answers import embeddings_answer
from ferry.llm.openai_api import InvalidRequest, parse_embeddings
from ferry.rest.http import decode_body, error_headers, failed, failure, header, read_body, send
from ferry.serving.request.dataplane import DataPlane, dumps
from ferry.streams import Stream

log = logging.getLogger(__name__)

PREFIX = "/serve/openai/v1/"
GENERATE: dict[str, str] = {"chat/completions": "chat/completions", "completions": "completions"}
"""POST route -> the route an LLM endpoint's engine is asked for."""
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies such as nginx pass each event on at once
]
DONE = b"data: [DONE]\n\n"


def is_openai(path: str) -> bool:
    return path.startswith("/serve/openai/")


class OpenAIRoutes:
    """The OpenAI face of one data plane."""

    def __init__(self, plane: DataPlane, max_body: int) -> None:
        self.plane = plane
        self.max_body = max_body

    async def handle(self, scope: dict, receive: Any, send_: Any) -> None:
        path, method = scope["path"], scope["method"]
        try:
            if not path.startswith(PREFIX):
                raise NotFound(f"no route {path}: the OpenAI API is under {PREFIX}")
            route = path[len(PREFIX) :].strip("/")
            if route in GENERATE:
                if method != "POST":
                    raise _method(method, route, "POST")
                return await self._generate(scope, receive, send_, GENERATE[route])
            if route == "embeddings":
                if method != "POST":
                    raise _method(method, route, "POST")
                return await self._embeddings(scope, receive, send_)
            if route == "models" or route.startswith("models/"):
                if method not in ("GET", "HEAD"):
                    raise _method(method, route, "GET")
                return await send(send_, 200, orjson.dumps(self._models(route[len("models/") :] or None)))
            raise NotFound(f"no route {path}: {PREFIX}chat/completions, completions, embeddings and models are served")
        except FerryError as exc:
            await send_openai_error(send_, exc)

    async def _generate(self, scope: dict, receive: Any, send_: Any, route: str) -> None:
        body = decode_body(scope, await read_body(scope, receive, self.max_body))
        if not isinstance(body, dict):
            raise InvalidInput("the request body must be a JSON object (Content-Type: application/json)")
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise InvalidInput("model is required: the name of an LLM endpoint (GET /models lists them)", param="model")
        name, version = _endpoint(model)
        key = header(scope, b"x-ferry-routing-key") or None
        result = await self.plane.infer(name, version, body, key, route=route)
        if type(result) is Stream:
            return await stream_events(result, receive, send_)
        await send(send_, 200, dumps(result))

    async def _embeddings(self, scope: dict, receive: Any, send_: Any) -> None:
        """Each input through the embeddings endpoint's stages as ``{"text": ...}`` (batched by its batcher when it
        has one), each answer's ``embedding`` into OpenAI's list."""
        try:
            request = parse_embeddings(decode_body(scope, await read_body(scope, receive, self.max_body)))
        except InvalidRequest as exc:
            raise InvalidInput(str(exc), param=exc.param, code=exc.code) from None
        name, version = _endpoint(request.model)
        if self.plane.model(name, version).spec.aux_config.get("openai") != "embeddings":
            raise NotFound(
                f"model {request.model!r} is not an embeddings endpoint: add one with --aux-config openai=embeddings "
                '(its Preprocess takes {"text": ...} and returns {"embedding": [...]})',
                param="model",
                code="model_not_found",
            )
        answers = await asyncio.gather(*(self.plane.infer(name, version, {"text": t}) for t in request.inputs))
        vectors = [_embedding(request.model, answer) for answer in answers]
        tokens = sum(a.get("tokens", 0) for a in answers if isinstance(a, dict) and isinstance(a.get("tokens"), int))
        await send(send_, 200, dumps(embeddings_answer(request.model, vectors, request.encoding_format, tokens)))

    def _models(self, wanted: str | None) -> dict[str, Any]:
        table = self.plane.table
        cards = {}
        for key, runtime in table.runtimes.items():
            if runtime.generates:
                cards[key] = _card(key)
                cards.setdefault(runtime.spec.name, _card(runtime.spec.name))  # the name serves its newest version
        for name, canary in table.canaries.items():
            if any(getattr(table.runtimes.get(t), "generates", False) for t in _targets(canary, table.runtimes)):
                cards[name] = _card(name)
        if wanted is None:
            return {"object": "list", "data": [cards[k] for k in sorted(cards)]}
        if wanted.strip("/") not in cards:
            raise NotFound(
                f"the model {wanted!r} does not exist: served LLM endpoints are {', '.join(sorted(cards)) or 'none'}",
                param="model",
                code="model_not_found",
            )
        return cards[wanted.strip("/")]


def _targets(canary: Any, runtimes: Mapping[str, Any]) -> list[str]:
    """The endpoint keys a canary (a ``CanarySpec``) may send to: its fixed endpoints, or those under its prefix."""
    if canary.input_endpoints:
        return list(canary.input_endpoints)
    prefix = canary.input_endpoint_prefix or ""
    return [key for key in runtimes if key.startswith(prefix)]


def _endpoint(model: str) -> tuple[str, str | None]:
    """The endpoint a body's ``model`` names: ``name`` or ``name/version``."""
    name, _, version = model.strip().strip("/").partition("/")
    return name, version or None


def _embedding(model: str, answer: Any) -> list[float]:
    vector = answer.get("embedding") if isinstance(answer, dict) else None
    if not isinstance(vector, list) or not all(isinstance(x, (int, float)) for x in vector):
        raise UserCodeError(
            f'endpoint {model}: an embeddings endpoint must answer {{"embedding": [numbers...]}}, '
            f"got {type(answer).__name__}",
            stage="postprocess",
        )
    return vector


def _card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "ferry"}


async def stream_events(stream: Stream, receive: Any, send_: Any) -> None:
    """Send ``stream``'s chunks as server-sent events until ``[DONE]``; stop it when the client goes away. The
    stream is closed on every way out (its end is what counts the request and frees its sequences)."""
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await send_({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        while True:
            following = asyncio.ensure_future(stream.__anext__())
            await asyncio.wait((following, gone), return_when=asyncio.FIRST_COMPLETED)
            if not following.done():  # the client went away: its sequences end at the next step
                following.cancel()
                with contextlib.suppress(BaseException):
                    await following
                return
            try:
                chunk = following.result()
            except StopAsyncIteration:
                break
            except FerryError as exc:
                await _event(send_, {"error": openai_error(exc)["error"]})
                break
            await _event(send_, chunk)
        await send_({"type": "http.response.body", "body": DONE})
    finally:
        gone.cancel()
        await stream.aclose()  # a no-op once it ended


async def _event(send_: Any, chunk: Any) -> None:
    await send_({"type": "http.response.body", "body": b"data: " + dumps(chunk) + b"\n\n", "more_body": True})


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def openai_error(error: FerryError) -> dict[str, Any]:
    """OpenAI's error body for a ferry error: its message (without local paths; for a failure of ferry's own, the
    kind and the log's id, as every ferry answer says it), a type, the param and code."""
    status, details = error.status_code, error.details
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 404:
        kind = "not_found_error"
    code = details.get("code") or type(error).__name__
    message = failure(error, type(error).__name__)["error"] if failed(error) else error.message
    return {
        "error": {
            "message": strip_paths(message),
            "type": kind,
            "param": details.get("param") if isinstance(details.get("param"), str) else None,
            "code": code if isinstance(code, (str, int)) else None,
        }
    }


async def send_openai_error(send_: Any, error: FerryError) -> None:
    await send(send_, error.status_code, orjson.dumps(openai_error(error)), extra=error_headers(error))


def _method(method: str, route: str, allowed: str) -> FerryError:
    return MethodNotAllowed(f"method {method} is not allowed on {PREFIX}{route}: use {allowed}", allow=allowed)
