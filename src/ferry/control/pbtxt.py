"""Protobuf text format (Triton's config.pbtxt): a reader into the dict protobuf's JSON form gives, and a writer."""

from __future__ import annotations

import ast
import re
from collections.abc import Collection
from typing import Any, NoReturn

from ferry.errors import InvalidInput

TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?|inf|nan)(?![\w.]))
    | (?P<ident>[A-Za-z_][\w.]*)
    | (?P<punct>[{}\[\]<>:,;])
    """,
    re.VERBOSE,
)
CLOSE = {"{": "}", "<": ">"}


def parse_pbtxt(text: str, repeated: Collection[str] = (), maps: Collection[str] = ()) -> dict[str, Any]:
    """Parse ``text``; ``repeated`` fields become lists, ``maps`` fields (``key``/``value`` entries) dicts.

    Both name fields by bare name (anywhere) or dotted path (``optimization.cuda.graph_spec.input``); a path
    in ``maps`` wins over a bare name in ``repeated``.

    Raises InvalidInput naming the line of the first syntax error.
    """
    return _Reader(_tokens(text), set(repeated), set(maps)).message(end=None)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens, pos, line = [], 0, 1
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if match is None:
            raise InvalidInput(f"config.pbtxt line {line}: unexpected {text[pos]!r}: is this a Triton config.pbtxt?")
        kind, value = match.lastgroup or "", match.group()
        if kind != "space":
            tokens.append((kind, value, line))
        line += value.count("\n")
        pos = match.end()
    return tokens


class _Reader:
    def __init__(self, tokens: list[tuple[str, str, int]], repeated: set[str], maps: set[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.repeated = repeated
        self.maps = maps
        self.path: list[str] = []

    def peek(self) -> tuple[str, str, int]:
        if self.pos < len(self.tokens):
            return self.tokens[self.pos]
        return ("end", "end of file", self.tokens[-1][2] if self.tokens else 1)

    def take(self, expected: str | None = None) -> tuple[str, str, int]:
        token = self.peek()
        if expected is not None and token[1] != expected:
            self.fail(f"expected {expected!r}")
        self.pos += 1
        return token

    def fail(self, what: str) -> NoReturn:
        kind, value, line = self.peek()
        raise InvalidInput(f"config.pbtxt line {line}: {what}, found {value!r}")

    def message(self, end: str | None) -> dict[str, Any]:
        fields: dict[str, list[Any]] = {}
        while not self.at_end(end):
            if self.peek()[0] != "ident":
                self.fail("expected a field name" if end is None else f"expected a field name or {end!r}")
            name = self.take()[1]
            self.path.append(name)
            fields.setdefault(name, []).extend(self.field_values())
            self.path.pop()
            if self.peek()[1] in (",", ";"):
                self.take()
        if end is not None:
            self.take(end)
        return {name: self.shape(".".join([*self.path, name]), values) for name, values in fields.items()}

    def at_end(self, end: str | None) -> bool:
        kind, text, _ = self.peek()
        if kind == "end" and end is not None:
            self.fail(f"expected {end!r} to close a message")
        return kind == "end" or text == end

    def field_values(self) -> list[Any]:
        has_colon = self.peek()[1] == ":"
        if has_colon:
            self.take()
        if self.peek()[1] == "[":
            return self.list_values()
        if self.peek()[1] in CLOSE:
            return [self.value()]
        if not has_colon:
            self.fail("expected ':' or '{'")
        return [self.value()]

    def list_values(self) -> list[Any]:
        self.take("[")
        values = []
        while self.peek()[1] != "]":
            values.append(self.value())
            if self.peek()[1] == ",":
                self.take()
            elif self.peek()[1] != "]":
                self.fail("expected ',' or ']'")
        self.take("]")
        return values

    def value(self) -> Any:
        kind, text, _ = self.peek()
        if kind not in ("string", "number", "ident") and text not in CLOSE:
            self.fail("expected a value")
        self.take()
        if text in CLOSE:
            return self.message(CLOSE[text])
        if kind == "string":
            return self.strings(text)
        if kind == "number":
            return _number(text)
        return {"true": True, "false": False, "True": True, "False": False}.get(text, text)

    def strings(self, first: str) -> str:
        parts = [ast.literal_eval(first)]
        while self.peek()[0] == "string":  # adjacent literals concatenate, as in C
            parts.append(ast.literal_eval(self.take()[1]))
        return "".join(parts)

    def shape(self, path: str, values: list[Any]) -> Any:
        name = path.rpartition(".")[2]
        if path in self.maps or name in self.maps:
            return {str(v.get("key")): v.get("value") for v in values if isinstance(v, dict)}
        if path in self.repeated or name in self.repeated:
            return values
        if len(values) > 1:
            raise InvalidInput(f"config.pbtxt: field {path!r} is given {len(values)} times but holds one value")
        return values[0]


def _number(text: str) -> int | float:
    lowered = text.lower()
    if "x" in lowered:
        return int(lowered, 16)
    if lowered.lstrip("+-") in ("inf", "nan"):
        return float(lowered)
    raw = lowered.rstrip("f")
    return int(raw) if re.fullmatch(r"[-+]?\d+", raw) else float(raw)


def to_pbtxt(config: dict[str, Any], maps: Collection[str] = (), enums: Collection[str] = ()) -> str:
    """Write ``config`` (a dict as ``parse_pbtxt`` returns) as protobuf text format.

    ``maps`` names the map fields (bare name or dotted path), written as ``{key: ... value: ...}`` entries;
    ``enums`` the enum fields, whose values are written bare (``TYPE_FP32``), where a string would be quoted.
    None values are left out; a map key that is an int is written as a number.
    """
    return "".join(_Writer(set(maps), set(enums)).fields(config, "", 0))


class _Writer:
    def __init__(self, maps: set[str], enums: set[str]) -> None:
        self.maps = maps
        self.enums = enums

    def fields(self, message: dict[str, Any], path: str, depth: int) -> list[str]:
        lines = []
        for name, value in message.items():
            full = f"{path}.{name}" if path else name
            lines.extend(self.field(name, full, value, depth))
        return lines

    def field(self, name: str, path: str, value: Any, depth: int) -> list[str]:
        pad = "  " * depth
        if value is None:
            return []
        if isinstance(value, dict) and (path in self.maps or name in self.maps):
            entries = ({"key": key, "value": item} for key, item in value.items())
            return [line for entry in entries for line in self.message(name, entry, path, depth)]
        if isinstance(value, dict):
            return self.message(name, value, path, depth)
        if isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
            return [line for item in value for line in self.message(name, item, path, depth)]
        if isinstance(value, (list, tuple)):
            return [f"{pad}{name}: [{', '.join(self.scalar(name, v) for v in value)}]\n"] if value else []
        return [f"{pad}{name}: {self.scalar(name, value)}\n"]

    def message(self, name: str, value: dict[str, Any], path: str, depth: int) -> list[str]:
        pad = "  " * depth
        return [f"{pad}{name} {{\n", *self.fields(value, path, depth + 1), f"{pad}}}\n"]

    def scalar(self, name: str, value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        text = str(value)
        if name in self.enums and re.fullmatch(r"[A-Za-z_]\w*", text):
            return text
        return '"' + text.translate(_ESCAPES) + '"'


_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})
