"""`ferry migrate`: upgrade the store's schema to this ferry's (a PostgreSQL store needs it; SQLite upgrades itself)."""

from __future__ import annotations

import argparse

from ferry.cli.context import Context


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "migrate",
        parents=[common],
        help="upgrade the store's schema to this ferry's (stop servers of older ferry versions first)",
    )
    p.add_argument("--store", metavar="URL", help="SQLAlchemy URL of the store (default: $FERRY_STORE)")
    p.add_argument("--dry-run", action="store_true", help="print the revisions it would apply and change nothing")
    p.set_defaults(func=migrate)


def migrate(ctx: Context, args: argparse.Namespace) -> None:
    from sqlalchemy.exc import DBAPIError

    from ferry import migrations
    from ferry.db import new_engine
    from ferry.errors import FerryError

    engine = new_engine(args.store or ctx.settings.store_url())
    try:
        done = migrations.migrate(engine, dry_run=args.dry_run)
    except DBAPIError as exc:  # unreachable, or a script failed: its transaction rolled back, nothing changed
        reason = str(exc.orig or exc).strip().splitlines()
        problem = reason[0] if reason else type(exc).__name__
        raise FerryError(f"the store at {migrations.shown(engine)}: {problem}") from exc
    finally:
        engine.dispose()
    if not done.steps:
        print(f"the store at {done.store} is already at head ({done.head})")
        return
    if done.before is None:
        verb = "would create" if args.dry_run else "created"
        print(f"{verb} a new store at {done.store} at schema revision {done.head}:")
    else:
        verb = "would upgrade" if args.dry_run else "upgraded"
        print(f"{verb} the store at {done.store} from schema revision {done.before} to {done.head}:")
    for revision, doc in done.steps:
        print(f"  {revision}: {doc}")
