"""The `serve` command: run the HTTP data plane for one service under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ferry.cli.context import Context
from ferry.cli.output import err_console, warn
from ferry.cli.workers import workers_arg, workers_for
from ferry.metrics import MULTIPROC_ENV
from ferry.stopping import DEADLINE_S, Stop
from ferry.tokens import load_tokens, read_token_file

log = logging.getLogger(__name__)

APP = "ferry.cli.serve:serving_app"
"""uvicorn's app factory: ferry's app, and the stop of the serving process it runs in."""
DRAIN_S = 2.0
"""Once asked to stop, requests in flight get this long to finish; those still running then are abandoned."""
WORKER_DEADLINE_S = DEADLINE_S - 0.5
"""A --workers process's own deadline: its supervisor's SIGTERM may reach it up to 0.5 s after the signal."""
_stop: Stop | None = None
"""This process's stop (``serve`` installs it; a --workers process gets its own in ``serving_app``)."""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="serve the service's endpoints over HTTP")
    p.add_argument("--host", default=None, help="address to bind (default $FERRY_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port to bind (default $FERRY_PORT or 8080)")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also answer KServe V2 gRPC (inference.GRPCInferenceService) on this port (default $FERRY_GRPC_PORT; "
        "off when unset); needs pip install 'ferry[triton]'",
    )
    p.add_argument(
        "--workers",
        type=workers_arg,
        default=None,
        metavar="N|auto",
        help="serving processes sharing the port, each loading every model; auto: one per core (at most 8, and as "
        "many as half the free memory holds), one when the service has an LLM endpoint (default $FERRY_WORKERS, "
        "$CLEARML_SERVING_NUM_PROCESS or auto)",
    )
    p.add_argument("--poll-interval", type=float, default=None, help="seconds between checks for a new revision")
    p.add_argument(
        "--root-path",
        default="",
        metavar="PREFIX",
        help="the path prefix a proxy serves ferry under (e.g. /ferry): routes answer under it, with or without "
        "it, and the console's links carry it",
    )
    p.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="require 'Authorization: Bearer <token>' on every route and gRPC call but the health probes; "
        "FILE holds one token a line "
        "(# comments allowed). Default $FERRY_SERVE_TOKENS_FILE; $FERRY_SERVE_TOKENS adds comma-separated tokens",
    )
    p.add_argument(
        "--admin-token-file",
        default=None,
        metavar="FILE",
        help="tokens (one a line, optionally followed by ' # ' and the holder's name, which the revisions record) "
        "that the web console's writes (rollback, canary weights, publish, tags) need; "
        "default $FERRY_ADMIN_TOKENS_FILE, $FERRY_ADMIN_TOKENS adds comma-separated ones; with none, writes are "
        "accepted from this machine (loopback) only",
    )
    p.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_false",
        default=None,
        help="record no Prometheus metrics and answer no GET /metrics (default: on; $FERRY_METRICS=0 turns them off)",
    )
    ray = p.add_argument_group("Ray Serve (pip install 'ferry[ray]')")
    ray.add_argument(
        "--ray",
        action="store_true",
        help="run the service as a Ray Serve application: an ingress deployment for HTTP and pre/post, one "
        "deployment per model version (replicas from aux config ray.*); this process follows the store",
    )
    ray.add_argument(
        "--address", default=None, help="the Ray cluster to join (default $RAY_ADDRESS, else a running local one)"
    )
    ray.add_argument("--ingress-min-replicas", type=int, default=1, metavar="N", help="fewest ingress replicas")
    ray.add_argument("--ingress-max-replicas", type=int, default=4, metavar="N", help="most ingress replicas")
    ray.add_argument(
        "--ingress-target",
        type=float,
        default=8.0,
        metavar="N",
        help="requests per ingress replica the autoscaler aims for, counting those in HTTP and pre/post (those "
        "waiting for a model deployment do not count: the model deployments scale on those)",
    )
    p.set_defaults(func=serve)


def serve(ctx: Context, args: argparse.Namespace) -> None:
    global _stop
    _stop = Stop(interrupt=True).install()  # until it serves, a stop signal ends the command where it is
    import uvicorn

    settings = ctx.settings
    service_id, service_name = _stop.call(_service, ctx)
    workers, chosen = workers_for(ctx, args.workers)
    os.environ["FERRY_SERVICE"] = service_id  # worker processes build the app from the environment
    from ferry.settings import WORKERS_ENV  # here: pydantic loads only when a command runs, not for --help

    os.environ[WORKERS_ENV] = str(workers)  # each worker's share of the cores and memory sizes its models
    if args.poll_interval is not None:
        os.environ["FERRY_POLL_INTERVAL"] = str(args.poll_interval)
    if args.metrics is False:
        os.environ["FERRY_METRICS"] = "0"
    console_settings(args.admin_token_file)
    root_path = plain_root_path(args.root_path)
    host, port = args.host or settings.host, args.port or settings.port
    grpc_port = args.grpc_port or settings.grpc_port
    if not args.ray:  # Ray Serve's proxy takes the port; it may be its own, already up
        port_free(host, port, "--port")
        if grpc_port:
            port_free(host, grpc_port, "--grpc-port")
    locked = token_lock(settings.serve_tokens, args.token_file or settings.serve_tokens_file, host)
    where = f"http://{host}:{port}" + _grpc(host, port, grpc_port)
    how = "on Ray Serve" if args.ray else f"with {workers} worker(s)" + (f" ({chosen})" if chosen else "")
    err_console.print(f"serving service {service_id} ({service_name}) on {where} {how}{locked}", highlight=False)
    if not args.ray:
        err_console.print(f"console: http://{host}:{port}{root_path}/console/", highlight=False)
    if args.ray:
        return _serve_on_ray(ctx, args, service_id, host, port, _stop)
    with _shared_metrics(workers if args.metrics is not False and settings.metrics else 1):
        _run(uvicorn, host, port, workers, _stop, root_path)
    if _stop.requested.is_set():
        _stop.done()  # threads a load or a request left running are abandoned, not waited for


def _serve_on_ray(ctx: Context, args: argparse.Namespace, service_id: str, host: str, port: int, stop: Stop) -> None:
    from ferry.rayserve import require

    require()
    from ferry.errors import InvalidInput
    from ferry.rayserve.apps import ingress_options
    from ferry.rayserve.launcher import pace, serve_on_ray

    low, high = args.ingress_min_replicas, args.ingress_max_replicas
    if not 0 < low <= high:
        raise InvalidInput(f"--ingress-min-replicas {low} and --ingress-max-replicas {high}: need 1 <= min <= max")
    if args.ingress_target <= 0:
        raise InvalidInput(f"--ingress-target {args.ingress_target:g}: give a number of requests above 0")
    ingress = ingress_options(low, high, args.ingress_target, pace(ctx.settings))
    serve_on_ray(ctx.store, service_id, args.address, host, port, ingress, stop)


def console_settings(admin_token_file: str | None) -> None:
    """The console's settings for the serving processes: the admin token file (checked now, before serving) and one
    form key that every worker shares."""
    if admin_token_file:
        admin_file = Path(admin_token_file).expanduser().resolve()  # workers may run in another directory
        read_token_file(admin_file)  # an unreadable or empty file fails here, before serving
        os.environ["FERRY_ADMIN_TOKENS_FILE"] = str(admin_file)
    os.environ.setdefault("FERRY_CONSOLE_SECRET", secrets.token_hex(32))


def plain_root_path(given: str) -> str:
    """``--root-path`` as uvicorn takes it: '' or '/a/b' (a leading slash added, a trailing one dropped)."""
    from ferry.errors import InvalidInput

    path = given.strip().strip("/")
    if any(c in path for c in "?#% ") or "//" in path:
        raise InvalidInput(f"--root-path {given!r}: give a plain path prefix such as /ferry")
    return f"/{path}" if path else ""


def _run(uvicorn: Any, host: str, port: int, workers: int, stop: Stop, root_path: str = "") -> None:
    """uvicorn serving ``APP``: in this process, or in ``workers`` processes under uvicorn's supervisor."""
    config = uvicorn.Config(
        APP,
        factory=True,
        host=host,
        port=port,
        root_path=root_path,
        workers=workers,
        loop="uvloop",
        http="ferry.rest.protocol:FerryHttpProtocol",  # httptools, each answer in one write
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # ferry does not read client addresses; the middleware costs every request
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=DRAIN_S,
    )
    if workers > 1:
        return _supervise(config, stop)
    server = uvicorn.Server(config)  # loads APP on its loop, with its own signal handlers on (see serving_app)
    server.run()
    if not server.started and not stop.requested.is_set():
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: what it printed says why


def serving_app() -> Any:
    """ferry's app for one serving process, whose SIGINT and SIGTERM then stop it within the deadline.

    uvicorn calls this on its loop with its own handlers installed: its ``Server`` only stops after a
    startup that waits for the first revision's load (however long), and only drains then. Here the first
    signal tells the server to stop, and the reconciler too while nothing is loaded yet (the load is left,
    the server skips serving); a second one, or the deadline, ends the process.
    """
    from ferry.server import create_app

    app = create_app()
    _stop_serving_on_signals(app)
    return app


def _stop_serving_on_signals(app: Any) -> None:
    import uvicorn

    global _stop
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)  # uvicorn's bound Server.handle_exit
    if not isinstance(server, uvicorn.Server):
        log.warning("uvicorn's signal handlers were not found: SIGINT and SIGTERM stop this process only after a load")
        return
    loop = asyncio.get_running_loop()
    worker = _stop is None  # a --workers process: its supervisor forwards the signal and decides on a second one
    stop = _stop = _stop or Stop(WORKER_DEADLINE_S)
    stop.interrupt, stop.repeat_ends = False, not worker

    def stop_serving(signum: int) -> None:
        server.should_exit = True
        if not app.plane.ready():  # still starting: the startup waits for the first load, which stops too
            loop.call_soon_threadsafe(app.reconciler.stop)

    stop.actions = [stop_serving]
    stop.install()
    captured = getattr(server, "_captured_signals", None)
    if server.should_exit and captured:  # a signal came while the app was built: uvicorn's handler took it
        stop.handle(captured.pop())


def _supervise(config: Any, stop: Stop) -> None:
    """uvicorn's supervisor of the --workers processes, its SIGINT and SIGTERM taken over by ``stop``: the first
    is passed on to each worker at once (each stops as one process does), a second or the deadline kills them."""
    from uvicorn.supervisors import Multiprocess

    supervisor = Multiprocess(config, sockets=[config.bind_socket()])  # installs its own handlers: replaced below

    def workers() -> list[Any]:
        return [p.process for p in supervisor.processes if p.process.pid is not None and p.process.exitcode is None]

    def pass_on(signum: int) -> None:
        supervisor.should_exit.set()  # it sends SIGTERM once more (ignored), then waits for them
        for process in workers():
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGTERM)

    def kill_workers() -> None:
        for process in workers():
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGKILL)

    stop.interrupt = False
    stop.actions, stop.before_exit = [pass_on], [kill_workers]
    stop.install()
    supervisor.run()


@contextlib.contextmanager
def _shared_metrics(workers: int) -> Iterator[None]:
    """With several workers, one scrape must count them all: each writes its values to one shared folder."""
    if workers <= 1 or os.environ.get(MULTIPROC_ENV):  # the user's own folder is theirs to clear
        yield
        return
    folder = tempfile.mkdtemp(prefix="ferry-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def token_lock(inline: str, token_file: str, host: str) -> str:
    """Check the tokens before any worker starts and hand their file to the workers; never print a token."""
    if token_file:
        token_file = str(Path(token_file).expanduser().resolve())  # workers may run in another directory
        os.environ["FERRY_SERVE_TOKENS_FILE"] = token_file
    tokens = load_tokens(inline, token_file)
    if tokens:
        return f", requests need one of {len(tokens)} bearer token(s)"
    if not is_loopback(host):
        warn(
            f"serving on {host} without tokens: anyone who can reach this address can call every endpoint; "
            "lock it with --token-file FILE (or FERRY_SERVE_TOKENS)"
        )
    return ""


def port_free(host: str, port: int, flag: str) -> None:
    """Fail now, before any model loads, when ``host:port`` cannot be listened on (uvicorn finds out only after)."""
    from ferry.errors import InvalidInput

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidInput(f"--host {host}: not a name of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror}{_advice(exc.errno, flag)}") from None


def _advice(code: int | None, flag: str) -> str:
    if code == errno.EADDRINUSE:
        return f" (another `ferry serve`?): stop it, or choose another port with {flag}"
    if code == errno.EADDRNOTAVAIL:
        return ": give --host an address of this machine (127.0.0.1, 0.0.0.0 or one of its interfaces)"
    return ""


def _grpc(host: str, port: int, grpc_port: int | None) -> str:
    """Hand the gRPC port (and the host) to the workers; fail now, in one line, when gRPC cannot run."""
    if not grpc_port:
        return ""
    from ferry.errors import InvalidInput
    from ferry.grpc import require

    require()
    if grpc_port == port:
        raise InvalidInput(f"--grpc-port {grpc_port} is the HTTP port too: give gRPC a port of its own")
    os.environ["FERRY_GRPC_PORT"], os.environ["FERRY_HOST"] = str(grpc_port), host
    return f" and grpc://{host}:{grpc_port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name or an empty host may well face the network


def _service(ctx: Context) -> tuple[str, str]:
    """The service's id and name; with the store down, the id as given (the server waits for the store)."""
    from sqlalchemy.exc import DBAPIError

    try:
        service = ctx.service
    except DBAPIError as exc:
        wanted = ctx.service_id or ctx.settings.service
        if not wanted:
            raise
        reason = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else type(exc).__name__
        err_console.print(f"warning: the store is unreachable ({reason}); serving starts once it answers")
        return wanted, "store unreachable"
    return service.id, service.name
