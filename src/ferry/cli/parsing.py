"""Parsers for the flag values that ClearML-Serving users type: shapes, dtypes, aux config, tensors."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferry.errors import InvalidInput

if TYPE_CHECKING:
    from ferry.control.spec import ModelQuery, TensorSpec


def parse_shapes(tokens: list[str] | None, flag: str = "--input-size") -> list[tuple[int, ...]]:
    """``"[-1, -1]" "[-1, 2]"`` -> one shape per JSON list; ``1 28 28`` -> a single shape."""
    if not tokens:
        return []
    text = " ".join(tokens).strip()
    if "[" not in text:
        return [_ints(tokens, flag)]
    joined = re.sub(r"\]\s*,?\s*\[", "],[", text)
    try:
        value = json.loads(f"[{joined}]")
    except json.JSONDecodeError:
        raise InvalidInput(f'bad {flag} {text!r}: write one JSON list per tensor, e.g. "[-1, 28, 28]"') from None
    if all(isinstance(v, int) for v in value):  # a single "[1, 2]" with no nesting
        return [tuple(value)]
    if not all(isinstance(v, list) and all(isinstance(d, int) for d in v) for v in value):
        raise InvalidInput(f"bad {flag} {text!r}: each shape is a list of integers such as [-1, 10]")
    return [tuple(v) for v in value]


def _ints(tokens: list[str], flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(t.strip(",")) for t in tokens)
    except ValueError:
        raise InvalidInput(
            f'bad {flag} {" ".join(tokens)!r}: give integers (1 28 28) or JSON lists ("[-1, 10]")'
        ) from None


def parse_dtypes(tokens: list[str] | None, flag: str = "--input-type") -> list[str]:
    from ferry.control.spec import canonical_dtype

    try:
        return [canonical_dtype(t) for t in tokens or []]
    except ValueError as exc:
        raise InvalidInput(f"{flag}: {exc}") from None


def build_tensors(
    names: list[str] | None, types: list[str] | None, sizes: list[str] | None, side: str
) -> tuple[TensorSpec, ...]:
    """Zip ``--<side>-name/-type/-size`` into tensor specs; a single type or size applies to all."""
    from ferry.control.spec import TensorSpec

    dtypes = parse_dtypes(types, f"--{side}-type")
    shapes = parse_shapes(sizes, f"--{side}-size")
    names = names or []
    count = max(len(names), len(dtypes), len(shapes))
    columns: dict[str, Sized] = {"name": names, "type": dtypes, "size": shapes}
    for label, values in columns.items():
        if len(values) not in (0, 1, count) or (label == "name" and len(values) not in (0, count)):
            raise InvalidInput(f"--{side}-{label} has {len(values)} values for {count} tensors: give one per tensor")
    return tuple(
        TensorSpec(
            name=names[i] if names else None,
            dtype=_pick(dtypes, i),
            shape=_pick(shapes, i),
        )
        for i in range(count)
    )


def _pick(values: list[Any], i: int) -> Any:
    if not values:
        return None
    return values[i] if len(values) > 1 else values[0]


def read_text(path: Path, what: str) -> str:
    """A user's text file, or InvalidInput naming it and what is wrong (never a traceback)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{what} {str(path)!r} is not UTF-8 text (byte {exc.start}: {exc.reason}): give a text file"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None


def parse_aux_config(tokens: list[str] | None) -> tuple[dict[str, Any], str | None]:
    """``key=value`` pairs (dotted keys nest, values JSON where they parse; ``chat_template=FILE`` reads the file)
    or one config file path."""
    if not tokens:
        return {}, None
    if len(tokens) == 1 and "=" not in tokens[0]:
        path = Path(tokens[0])
        if not path.is_file():
            raise InvalidInput(f"--aux-config {tokens[0]!r} is neither key=value nor an existing file")
        return {}, read_text(path, "--aux-config file")
    config: dict[str, Any] = {}
    for token in tokens:
        key, sep, raw = token.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--aux-config {token!r}: write key=value, e.g. max_batch_size=32")
        value = _value(raw.strip())
        if key.strip() in FILE_KEYS and isinstance(value, str) and "{" not in value and Path(value).is_file():
            value = read_text(Path(value), f"--aux-config {key.strip()}")  # the server has no such file: its text
        _set_dotted(config, key.strip(), value)
    return config, None


FILE_KEYS = ("chat_template",)
"""Aux keys whose value may be a file on the command line's machine: the file's text is stored."""


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw.strip("'")


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidInput(f"--aux-config {key!r}: {part!r} is already set to a value")
        node = child
    node[leaf] = value


def add_model_query(p: argparse.ArgumentParser, name_help: str) -> None:
    """The flags that pick models from the registry: `model add` takes the newest, `model auto-update` follows."""
    p.add_argument("--name", help=name_help)
    p.add_argument("--project", help="... and this exact project")
    p.add_argument("--tags", nargs="*", default=[], help="... carrying all of these tags")
    p.add_argument("--published", action="store_true", help="... and published")


def model_query(args: Any) -> ModelQuery:
    from ferry.control.spec import ModelQuery

    return ModelQuery(name=args.name, project=args.project, tags=args.tags, published=args.published)


def add_endpoint_settings(p: argparse.ArgumentParser) -> None:
    """The flags `model add` and `model auto-update` share, read back by ``endpoint_settings``."""
    p.add_argument("--preprocess", help="Preprocess code: a .py file, or a folder with preprocess.py")
    for side in ("input", "output"):
        p.add_argument(f"--{side}-size", nargs="+", help=f'{side} shapes: "[-1, 10]" per tensor, or 1 28 28')
        p.add_argument(f"--{side}-type", nargs="+", help=f"{side} dtypes (numpy names: float32 int64 ...)")
        p.add_argument(f"--{side}-name", nargs="+", help=f"{side} tensor names")
    p.add_argument("--aux-config", nargs="+", help="engine settings as key=value pairs, or a config file")


def endpoint_settings(args: Any) -> dict[str, Any]:
    """What `model add` and `model auto-update` share: preprocess path, tensor specs and aux config."""
    aux, aux_text = parse_aux_config(args.aux_config)
    return {
        "preprocess": Path(args.preprocess) if args.preprocess else None,
        "inputs": build_tensors(args.input_name, args.input_type, args.input_size, "input"),
        "outputs": build_tensors(args.output_name, args.output_type, args.output_size, "output"),
        "aux_config": aux,
        "aux_config_text": aux_text,
    }
