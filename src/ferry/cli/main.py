"""Entry point of the `ferry` command: builds the parser, runs one command, maps errors to one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ferry import __version__
from ferry.cli import console, dashboard, declarative, metrics, migrate, models, serve, services, triton
from ferry.cli.context import Context
from ferry.cli.output import fail
from ferry.errors import FerryError


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument(
        "--id",
        dest="service_id",
        default=argparse.SUPPRESS,
        help="service id (default: $FERRY_SERVICE, or the only service)",
    )
    parser = Parser(
        prog="ferry",
        parents=[common],
        description="ferry: serve models from a registry with your own pre/post-processing code.",
        epilog="Settings come from FERRY_* variables: FERRY_HOME (default ~/.ferry), FERRY_STORE, "
        "FERRY_ARTIFACT_ROOT, FERRY_SERVICE.",
    )
    parser.add_argument("--version", action="version", version=f"ferry {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    services.register(sub, common)
    models.register(sub, common)
    serve.register(sub, common)
    console.register(sub, common)
    declarative.register(sub, common)
    metrics.register(sub, common)
    dashboard.register(sub, common)
    triton.register(sub, common)
    migrate.register(sub, common)
    return parser


def main(argv: list[str] | None = None, before_command: Callable[[], object] = lambda: None) -> int:
    """Run one command; ``before_command`` is called once the arguments are parsed, before it runs."""
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError  # after parsing: `--help` and usage errors stay quick

    ctx = Context(getattr(args, "service_id", None))
    before_command()
    try:
        args.func(ctx, args)
    except FerryError as exc:
        fail(str(exc))
        return 1
    except ValidationError as exc:
        from ferry.control.service import describe

        fail(describe(exc))
        return 1
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    except (OSError, UnicodeDecodeError) as exc:  # a file the command was given: name it, no traceback
        fail(_file_problem(exc))
        return 1
    finally:
        ctx.close()  # the store's connections: a caller may run many commands in one process (the tests do)
    return 0


def _file_problem(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"a file given is not UTF-8 text ({exc.reason} at byte {exc.start}): give a text file"
    where = f" {exc.filename!r}" if exc.filename else ""
    return f"cannot use{where}: {exc.strerror or exc}"


if __name__ == "__main__":
    sys.exit(main())
