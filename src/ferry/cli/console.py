"""The `console` command: the web console on its own, for every service in the store, with no model loaded."""

from __future__ import annotations

import argparse

from ferry.cli.context import Context
from ferry.cli.output import err_console
from ferry.cli.serve import console_settings, plain_root_path, port_free, token_lock

APP = "ferry.server:create_console_app"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "console",
        parents=[common],
        help="serve the web console for every service in the store (no models loaded)",
        description="The web console (what `ferry serve` shows at /console/) on its own: every service, its "
        "endpoints, revisions and instances, and the model registry, from the store; writes as in `ferry serve`.",
    )
    p.add_argument("--host", default=None, help="address to bind (default $FERRY_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=8090, help="port to bind (default 8090)")
    p.add_argument("--root-path", default="", metavar="PREFIX", help="the path prefix a proxy serves it under")
    p.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="tokens that reading the console needs (a browser logs in at /console/login); "
        "default $FERRY_SERVE_TOKENS_FILE",
    )
    p.add_argument(
        "--admin-token-file",
        default=None,
        metavar="FILE",
        help="tokens (one a line, optionally followed by ' # ' and the holder's name, which the revisions record) "
        "that the console's writes need (default $FERRY_ADMIN_TOKENS_FILE); with none, writes are "
        "accepted from this machine (loopback) only",
    )
    p.set_defaults(func=console)


def console(ctx: Context, args: argparse.Namespace) -> None:
    import uvicorn

    settings = ctx.settings
    ctx.store.list_services()  # an unreachable store fails here, in one line, before the port opens
    host, root = args.host or settings.host, plain_root_path(args.root_path)
    port_free(host, args.port, "--port")
    console_settings(args.admin_token_file)
    locked = token_lock(settings.serve_tokens, args.token_file or settings.serve_tokens_file, host)
    err_console.print(f"console for every service in the store on http://{host}:{args.port}{root}/console/{locked}")
    config = uvicorn.Config(
        APP, factory=True, host=host, port=args.port, root_path=root, loop="uvloop", log_level="warning",
        access_log=False, server_header=False,
    )  # fmt: skip
    uvicorn.Server(config).run()
