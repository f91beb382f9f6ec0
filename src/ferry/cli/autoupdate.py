"""The `model auto-update` and `model untag` commands, and the rules' reconcile after every registry change."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ferry.cli.context import Context
from ferry.cli.output import err_console, warn
from ferry.cli.parsing import add_endpoint_settings, add_model_query, endpoint_settings, model_query
from ferry.control.engine_names import ENGINE_NAMES

if TYPE_CHECKING:
    from ferry.registry.models import ModelRecord


def register(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = msub.add_parser(
        "auto-update",
        parents=[common],
        help="serve the newest models matching a query as ENDPOINT/1, /2, ... as they are uploaded or published",
    )
    p.add_argument("--engine", required=True, choices=ENGINE_NAMES, help="what runs the models")
    p.add_argument("--endpoint", required=True, help="endpoint name: versions are served at /serve/NAME/N")
    add_model_query(p, name_help="models with this exact name")
    p.add_argument("--max-versions", type=int, default=1, help="how many of the newest stay served (default 1)")
    add_endpoint_settings(p)
    p.set_defaults(func=auto_update)
    p = msub.add_parser("untag", parents=[common], help="remove tags from a model")
    p.add_argument("--model-id", required=True, help="the model to untag")
    p.add_argument("--tags", nargs="+", required=True, help="tags to remove")
    p.set_defaults(func=untag)


def auto_update(ctx: Context, args: argparse.Namespace) -> None:
    query = model_query(args)
    outcome = ctx.control.add_auto_update(
        ctx.service.id,
        engine=args.engine,
        endpoint=args.endpoint,
        query=query,
        max_versions=args.max_versions,
        **endpoint_settings(args),
    )
    for message in outcome.warnings:
        warn(message)
    print(f"revision {outcome.revision.number}: {outcome.revision.summary}")


def untag(ctx: Context, args: argparse.Namespace) -> None:
    record = ctx.registry.untag(args.model_id, args.tags)
    print(f"Model {record.id} tags: {' '.join(record.tags)}")
    follow(ctx, record)


def follow(ctx: Context, model: ModelRecord) -> None:
    """Reconcile the auto-update rules that may match ``model`` after it changed; print what they deployed."""
    from ferry.control.autoupdate import reconcile_for_model

    for revision in reconcile_for_model(ctx.store, ctx.registry, model):
        # stderr: scripts read the command's own line (the new model's id) from stdout
        err_console.print(
            f"service {revision.service_id} revision {revision.number}: {revision.summary}", highlight=False
        )
