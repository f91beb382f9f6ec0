"""OpenAI chat messages checked and reduced to role and text (the rules: ``openai_api``'s docstring)."""

from __future__ import annotations

from typing import Any

from ferry.llm.openai_fields import InvalidRequest, json_object, show

ROLES = ("system", "developer", "user", "assistant", "tool")

_MESSAGE_FIELDS = frozenset(["role", "content", "name", "tool_call_id"])
_ASSISTANT_NULL_FIELDS = frozenset(["refusal", "audio", "function_call", "tool_calls"])
_REFUSED_PARTS = {"image_url": "image", "input_image": "image", "input_audio": "audio", "file": "file"}


def parse_messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"messages must be a non-empty list of messages, got {show(value)}", "messages")
    return [_message(message, f"messages[{i}]") for i, message in enumerate(value)]


def _message(message: Any, where: str) -> dict[str, Any]:
    message = json_object(message, where)
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {show(role)}", f"{where}.role")
    _message_fields(message, role, where)
    content = message.get("content")
    if content is None and role != "assistant":
        raise InvalidRequest(f"{where}.content is required for a {role} message", f"{where}.content")
    text = "" if content is None else _content_text(content, f"{where}.content")
    return {"role": "system" if role == "developer" else role, "content": text}


def _message_fields(message: dict[str, Any], role: str, where: str) -> None:
    for name, value in message.items():
        if name in _MESSAGE_FIELDS or (role == "assistant" and name == "annotations"):
            continue
        if role == "assistant" and name in _ASSISTANT_NULL_FIELDS:
            if value is None or value == []:
                continue
            raise InvalidRequest(
                f"{where}.{name} is not supported (tool and function calls are not)", f"{where}.{name}"
            )
        raise InvalidRequest(f"unknown field {name!r} in {where}", f"{where}.{name}")


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of text parts, got {show(content)}", where)
    return "".join(_part_text(part, f"{where}[{i}]") for i, part in enumerate(content))


def _part_text(part: Any, where: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if isinstance(kind, str) and kind in _REFUSED_PARTS:
        raise InvalidRequest(f"{_REFUSED_PARTS[kind]} content parts are not supported, only text", f"{where}.type")
    if kind != "text" or not isinstance(part.get("text"), str) or set(part) != {"type", "text"}:
        raise InvalidRequest(f'{where} must be {{"type": "text", "text": "..."}}, got {show(part)}', where)
    return part["text"]
