"""The `serve` command: run the HTTP data plane for one service under uvicorn."""

from __future__ import annotations

import argparse
import os

from ferry.cli.context import Context
from ferry.cli.output import err_console


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="serve the service's endpoints over HTTP")
    p.add_argument("--host", default=None, help="address to bind (default $FERRY_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port to bind (default $FERRY_PORT or 8080)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="serving processes sharing the port (default $FERRY_WORKERS, $CLEARML_SERVING_NUM_PROCESS or 1)",
    )
    p.add_argument("--poll-interval", type=float, default=None, help="seconds between checks for a new revision")
    p.set_defaults(func=serve)


def serve(ctx: Context, args: argparse.Namespace) -> None:
    import uvicorn

    settings = ctx.settings
    service = ctx.service
    workers = args.workers or _env_workers() or settings.workers
    os.environ["FERRY_SERVICE"] = service.id  # worker processes build the app from the environment
    if args.poll_interval is not None:
        os.environ["FERRY_POLL_INTERVAL"] = str(args.poll_interval)
    host, port = args.host or settings.host, args.port or settings.port
    err_console.print(
        f"serving service {service.id} ({service.name}) on http://{host}:{port} with {workers} worker(s)",
        highlight=False,
    )
    uvicorn.run(
        "ferry.rest.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # ferry does not read client addresses; the middleware costs every request
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=30,
    )


def _env_workers() -> int | None:
    value = os.environ.get("CLEARML_SERVING_NUM_PROCESS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None
