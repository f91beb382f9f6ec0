"""Declarative commands: `export` prints the service config as YAML, `apply -f` makes the service match a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.cli.context import Context
from ferry.cli.output import console
from ferry.cli.parsing import read_text
from ferry.errors import NotFound

if TYPE_CHECKING:
    from ferry.control.declarative import Change


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export", parents=[common], help="print the service's whole config as YAML (the input of `apply -f`)"
    )
    p.set_defaults(func=export)
    p = sub.add_parser(
        "apply", parents=[common], help="make the service match a YAML file from `export` (one revision)"
    )
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="the YAML file; - reads standard input")
    p.add_argument("--dry-run", action="store_true", help="validate and print the changes; write nothing")
    p.set_defaults(func=apply)


def export(ctx: Context, args: argparse.Namespace) -> None:
    from ferry.control.declarative import export_document, to_yaml

    revision = ctx.store.get_revision(ctx.service.id)
    header = (
        f"ferry service {ctx.service.name!r} ({ctx.service.id}), revision {revision.number}\n"
        "`ferry apply -f FILE` makes a service match this file; preprocess paths may name local files or folders"
    )
    sys.stdout.write(to_yaml(export_document(revision.config), header))


def apply(ctx: Context, args: argparse.Namespace) -> None:
    from ferry.control.declarative import apply_document

    text, source, base_dir = _read(args.file)
    applied = apply_document(ctx.control, ctx.service.id, text, source, base_dir, dry_run=args.dry_run)
    if not applied.changes:
        print(f"no changes: the service already matches {source}")
        return
    for change in applied.changes:
        _print_change(change)
    verb = "would upload" if args.dry_run else "uploaded"
    for path in applied.uploads:
        print(f"{verb} preprocess {path}")
    if args.dry_run:
        print(f"dry run: {len(applied.changes)} change(s), nothing written")
    elif applied.revision is not None:
        print(f"revision {applied.revision.number}: {applied.revision.summary}")
    else:  # another writer made the same changes first
        print(f"no changes written: the service matched {source} by the time of writing")


def _read(name: str) -> tuple[str, str, Path]:
    if name == "-":
        return sys.stdin.read(), "<stdin>", Path.cwd()
    path = Path(name).expanduser()
    if not path.is_file():
        raise NotFound(f"no file {name!r}: write one with `ferry export > {name}`")
    return read_text(path, "file"), name, path.resolve().parent


def _print_change(change: Change) -> None:
    colour = {"+": "green", "-": "red"}.get(change.sign, "yellow")
    console.print(f"[{colour}]{change.sign} {change.what}[/{colour}]", highlight=False)
    for line in change.details:
        console.print(f"    {line}", highlight=False, markup=False)
