"""`ferry model canary`: split an endpoint name's requests by weight over fixed endpoints or a prefix."""

from __future__ import annotations

import argparse

from ferry.cli.context import Context
from ferry.cli.output import warn


def register(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = msub.add_parser(
        "canary",
        parents=[common],
        help="split /serve/NAME's requests by weight over endpoints, or over the newest versions under a prefix",
        description="Requests to /serve/ENDPOINT go to one target each, chosen by weight (normalised). With "
        "--input-endpoint-prefix NAME/ the weights apply to the newest versions of NAME, newest first. A request "
        "carrying an X-Ferry-Routing-Key header lands on the same target while the canary stays the same.",
    )
    p.add_argument("--endpoint", required=True, help="canary name: served at /serve/ENDPOINT (wins over an endpoint)")
    p.add_argument("--weights", nargs="+", type=float, required=True, metavar="W", help="one weight per target")
    targets = p.add_mutually_exclusive_group(required=True)
    targets.add_argument("--input-endpoints", nargs="+", metavar="NAME[/VERSION]", help="fixed targets, one per weight")
    targets.add_argument(
        "--input-endpoint-prefix",
        "--input-endpoints-prefix",
        dest="input_endpoint_prefix",
        metavar="NAME/",
        help="the newest versions of endpoint NAME, newest first (as many as there are weights)",
    )
    p.set_defaults(func=canary)


def canary(ctx: Context, args: argparse.Namespace) -> None:
    outcome = ctx.control.add_canary(
        ctx.service.id,
        endpoint=args.endpoint,
        weights=tuple(args.weights),
        input_endpoints=tuple(args.input_endpoints or ()),
        input_endpoint_prefix=args.input_endpoint_prefix,
    )
    for message in outcome.warnings:
        warn(message)
    print(f"revision {outcome.revision.number}: {outcome.revision.summary}")
