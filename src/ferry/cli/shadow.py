"""`ferry model shadow`: copy a fraction of an endpoint's requests to another endpoint after each live answer."""

from __future__ import annotations

import argparse

from ferry.cli.context import Context
from ferry.cli.output import warn


def register(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = msub.add_parser(
        "shadow",
        parents=[common],
        help="copy a fraction of an endpoint's requests to a shadow target, after the live answer",
        description="After each live answer of ENDPOINT, a sampled copy of its request goes to TARGET. The caller "
        "never waits for it; the shadow's errors, latency and the share of answers equal to the live ones show "
        "in `ferry status --json` (under shadows). At most 8 shadow requests run at once per shadow; the "
        "rest are dropped and counted. `model remove --endpoint ENDPOINT` removes the shadow.",
    )
    p.add_argument("--endpoint", required=True, metavar="NAME[/VERSION]", help="the live endpoint to shadow")
    p.add_argument("--target", required=True, metavar="NAME[/VERSION]", help="the endpoint the copies go to")
    p.add_argument(
        "--fraction", type=float, default=1.0, help="share of the live requests copied, over 0 up to 1 (default 1)"
    )
    p.set_defaults(func=shadow)


def shadow(ctx: Context, args: argparse.Namespace) -> None:
    outcome = ctx.control.add_shadow(ctx.service.id, endpoint=args.endpoint, target=args.target, fraction=args.fraction)
    for message in outcome.warnings:
        warn(message)
    print(f"revision {outcome.revision.number}: {outcome.revision.summary}")
