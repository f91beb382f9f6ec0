"""OpenAI request fields checked one by one, and the errors that name them (used by ``openai_api``).

``InvalidRequest`` is what every check raises: OpenAI's 400 error body naming the field (``param``). The rules say,
per field that ferry accepts without effect or refuses, what it accepts (see ``openai_api``'s docstring).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

# ---- errors ----------------------------------------------------------------------------------------------------


class InvalidRequest(ValueError):
    """A body the API refuses: answered 400 with OpenAI's error body naming ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The error body to answer with (status 400)."""
        return error_body(self.message, param=self.param, code=self.code)


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# ---- field checks ----------------------------------------------------------------------------------------------


def show(value: Any) -> str:
    """A value as the client sent it (JSON), cut short so an error message stays one line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _range_text(lo: float | None, hi: float | None, lo_open: bool) -> str:
    if lo_open:
        return f"greater than {lo}" + (f" and at most {hi}" if hi is not None else "")
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def number(
    body: dict[str, Any],
    name: str,
    default: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    integer: bool = False,
    lo_open: bool = False,
) -> Any:
    """``body[name]`` checked to be a number (an integer if asked) in range; ``default`` when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise InvalidRequest(f"{name} must be {'an integer' if integer else 'a number'}, got {show(value)}", name)
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    if (isinstance(value, float) and not math.isfinite(value)) or too_low or (hi is not None and value > hi):
        raise InvalidRequest(f"{name} must be {_range_text(lo, hi, lo_open)}, got {show(value)}", name)
    return value if integer else float(value)


def boolean(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false, got {show(value)}", name)
    return value


def json_object(body: Any, where: str | None = None) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"{where or 'the request body'} must be a JSON object, got {show(body)}", where)
    return body


def known_fields(body: dict[str, Any], known: frozenset[str]) -> None:
    for name in body:
        if name not in known:
            raise InvalidRequest(f"unknown field {name!r}", name)


def model_name(body: dict[str, Any]) -> str:
    value = body.get("model")
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"model must be a non-empty string, got {show(value)}", "model")
    return value


def user_field(body: dict[str, Any]) -> str | None:
    value = body.get("user")
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"user must be a string, got {show(value)}", "user")
    return value


# ---- fields accepted without effect, or refused ----------------------------------------------------------------

Rule = Callable[[Any], str | None]
"""A non-null field's value -> None when accepted without effect, else why it is refused."""


def _only(accepted: Any, refusal: str) -> Rule:
    return lambda value: None if value == accepted and type(value) is type(accepted) else refusal


def _never(refusal: str) -> Rule:
    return lambda value: refusal


_COMMON_RULES: dict[str, Rule] = {
    "user": lambda value: None if isinstance(value, str) else f"user must be a string, got {show(value)}",
    "logit_bias": _only({}, "logit_bias is not supported yet; only an empty object is accepted"),
    "skip_special_tokens": _only(True, "skip_special_tokens false is not supported yet"),
    "include_stop_str_in_output": _only(False, "include_stop_str_in_output true is not supported yet"),
}
CHAT_RULES: dict[str, Rule] = {
    **_COMMON_RULES,
    "store": lambda value: None if isinstance(value, bool) else "store must be true or false",
    "metadata": lambda value: None if isinstance(value, dict) else "metadata must be an object",
    "parallel_tool_calls": lambda value: None if isinstance(value, bool) else "parallel_tool_calls must be a boolean",
    "service_tier": lambda value: None if isinstance(value, str) else "service_tier must be a string",
    "tools": _only([], "tools are not supported yet"),
    "tool_choice": _only("none", 'tool_choice is not supported yet; only "none" is accepted'),
    "modalities": _only(["text"], 'modalities other than ["text"] are not supported'),
    "functions": _never("functions are not supported"),
    "function_call": _never("function_call is not supported"),
    "audio": _never("audio output is not supported"),
    "prediction": _never("prediction (predicted outputs) is not supported"),
    "web_search_options": _never("web_search_options is not supported"),
}
COMPLETION_RULES: dict[str, Rule] = {
    **_COMMON_RULES,
    "suffix": _never("suffix is not supported"),
    "best_of": _only(1, "best_of other than 1 is not supported"),
}


def apply_rules(body: dict[str, Any], rules: dict[str, Rule]) -> tuple[str, ...]:
    """The names of the fields present and accepted without effect; InvalidRequest for the first refused one."""
    accepted = []
    for name, rule in rules.items():
        value = body.get(name)
        if value is None:
            continue
        refusal = rule(value)
        if refusal is not None:
            raise InvalidRequest(refusal, name)
        accepted.append(name)
    return tuple(accepted)
