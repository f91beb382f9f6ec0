"""What the CLI prints: one JSON document with --json, else rich tables; errors as one stderr line."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence
from typing import IO, Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table


class StreamConsole:
    """A rich Console for ``sys.stdout`` (or ``sys.stderr``) as it is when printing, not as it was at import.

    Whether the stream is a terminal decides colours and width once, when a Console is made; a caller that
    redirects the stream (``contextlib.redirect_stdout``: the tests run commands in process) gets plain text
    at pipe width then, as the command in a pipe does.
    """

    def __init__(self, stderr: bool = False) -> None:
        self.stderr = stderr
        self._made: tuple[IO[str], Console] | None = None

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self._console().print(*objects, **kwargs)

    def _console(self) -> Console:
        stream = sys.stderr if self.stderr else sys.stdout
        made = self._made
        if made is None or made[0] is not stream:
            width = None if self.stderr or stream.isatty() else 200  # stdout to a pipe: no wrapping
            made = self._made = (stream, Console(file=stream, soft_wrap=True, width=width))
        return made[1]


console = StreamConsole()
err_console = StreamConsole(stderr=True)


def emit_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
    sys.stdout.write("\n")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if not rows:
        console.print(f"{escape(title)}: (none)")
        return
    view = Table(title=title, title_justify="left")
    for name in columns:
        ident = name == "id" or name.endswith(" id")
        view.add_column(name, overflow="fold", no_wrap=ident, min_width=32 if ident else None)
    for row in rows:
        view.add_row(*("" if cell is None else escape(str(cell)) for cell in row))
    console.print(view)


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


def fail(message: str) -> None:
    err_console.print(f"[red]ferry: error:[/red] {escape(message)}", highlight=False)
