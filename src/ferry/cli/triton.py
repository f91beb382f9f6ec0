"""`ferry triton sync`: keep a Triton model repository (and the models loaded in Triton) on the service's revision."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.cli.context import Context
from ferry.cli.output import console, emit_json, table
from ferry.errors import EngineError
from ferry.stopping import Stop, call_bounded

if TYPE_CHECKING:
    from ferry.triton.sync import RepositorySync

DEFAULT_URL = "http://127.0.0.1:8000"
DRAIN_S = 2.0
"""Once asked to stop, a pass in progress (a load, a call to the store) gets this long to end; then it is left."""
DEREGISTER_S = 1.0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    triton = sub.add_parser("triton", parents=[common], help="drive a Triton server from the service's revisions")
    tsub = triton.add_subparsers(dest="triton_command", metavar="COMMAND", required=True)
    p = tsub.add_parser(
        "sync",
        parents=[common],
        help="write every triton endpoint into a model repository and load it in Triton (explicit mode)",
    )
    p.add_argument("--model-repository", required=True, type=Path, metavar="DIR", help="Triton's --model-repository")
    p.add_argument("--watch", action="store_true", help="keep following new revisions until Ctrl-C or SIGTERM")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between revision checks")
    p.add_argument(
        "--triton-url",
        help="Triton's HTTP address (host:port), or grpc://host:port for gRPC; default: grpc:// the service's "
        f"--triton-grpc-server setting, else {DEFAULT_URL}",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document and nothing else (without --watch)")
    p.set_defaults(func=sync)


def sync(ctx: Context, args: argparse.Namespace) -> None:
    if args.watch:
        stop = Stop(interrupt=True).install()  # until it follows, a signal ends it where it is
        return _watch(ctx, *stop.call(_syncer, ctx, args), args.interval, stop)
    sid, syncer = _syncer(ctx, args)
    revision = ctx.store.get_revision(sid)
    outcomes = syncer.reconcile(revision.config)
    if args.json:
        emit_json({"revision": revision.number, "models": [{**o.__dict__, "state": o.state} for o in outcomes]})
    else:
        rows = [(o.endpoint, o.model, o.change, o.error) for o in outcomes]
        table(f"Triton models of revision {revision.number}", ("endpoint", "triton model", "change", "error"), rows)
    failed = [o.endpoint for o in outcomes if o.change == "failed"]
    if failed:
        raise EngineError(f"{len(failed)} endpoint(s) not served by Triton: {', '.join(failed)} (errors above)")


def _syncer(ctx: Context, args: argparse.Namespace) -> tuple[str, RepositorySync]:
    from ferry.triton.sync import RepositorySync, TritonControl

    sid = ctx.service.id
    control = TritonControl(args.triton_url or _default_url(ctx, sid))
    repository = args.model_repository.expanduser().resolve()
    return sid, RepositorySync(sid, repository, control, ctx.registry, ctx.artifacts)


def _default_url(ctx: Context, sid: str) -> str:
    grpc = ctx.store.get_revision(sid).config.settings.triton_grpc_server
    return f"grpc://{grpc.removeprefix('grpc://')}" if grpc else DEFAULT_URL


def _watch(ctx: Context, sid: str, syncer: RepositorySync, interval: float, stop: Stop) -> None:
    """Follow the revisions in a thread until SIGINT or SIGTERM; then give a pass in progress ``DRAIN_S`` to end,
    deregister, and exit 0 (a pass still running, a load in Triton say, is left: Triton goes on with it)."""
    from ferry.triton.sync import StatusReport, watch

    details = {"repository": str(syncer.repository), "triton_url": syncer.control.url}
    status = stop.call(StatusReport, ctx.store, sid, details, ctx.settings.heartbeat_interval)
    stop.interrupt = False  # from here the main thread only waits
    console.print(
        f"syncing {syncer.repository} with Triton at {syncer.control.url} ({syncer.control.protocol}); Ctrl-C stops",
        highlight=False,
    )
    ended, crashed = stop.follow(
        lambda: watch(syncer, ctx.store, sid, interval, _line, status, stop.requested), "ferry triton sync", DRAIN_S
    )
    call_bounded("deregistering", status.close, DEREGISTER_S)
    if crashed is not None:
        raise crashed
    _line("stopped" if ended else "stopped (a pass in progress was left: the next sync takes it up)")
    stop.done()


def _line(text: str) -> None:
    print(text, flush=True)
