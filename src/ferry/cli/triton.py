"""`ferry triton sync`: keep a Triton model repository (and the models loaded in Triton) on the service's revision."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.cli.context import Context
from ferry.cli.output import console, emit_json, table
from ferry.errors import EngineError

if TYPE_CHECKING:
    from ferry.triton.sync import RepositorySync

DEFAULT_URL = "http://127.0.0.1:8000"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    triton = sub.add_parser("triton", parents=[common], help="drive a Triton server from the service's revisions")
    tsub = triton.add_subparsers(dest="triton_command", metavar="COMMAND", required=True)
    p = tsub.add_parser(
        "sync",
        parents=[common],
        help="write every triton endpoint into a model repository and load it in Triton (explicit mode)",
    )
    p.add_argument("--model-repository", required=True, type=Path, metavar="DIR", help="Triton's --model-repository")
    p.add_argument("--watch", action="store_true", help="keep following new revisions until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between revision checks")
    p.add_argument(
        "--triton-url",
        help="Triton's HTTP address (host:port), or grpc://host:port for gRPC; default: grpc:// the service's "
        f"--triton-grpc-server setting, else {DEFAULT_URL}",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document and nothing else (without --watch)")
    p.set_defaults(func=sync)


def sync(ctx: Context, args: argparse.Namespace) -> None:
    from ferry.triton.sync import RepositorySync, TritonControl

    sid = ctx.service.id
    control = TritonControl(args.triton_url or _default_url(ctx, sid))
    repository = args.model_repository.expanduser().resolve()
    syncer = RepositorySync(sid, repository, control, ctx.registry, ctx.artifacts)
    if args.watch:
        return _watch(ctx, sid, syncer, args.interval)
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


def _default_url(ctx: Context, sid: str) -> str:
    grpc = ctx.store.get_revision(sid).config.settings.triton_grpc_server
    return f"grpc://{grpc.removeprefix('grpc://')}" if grpc else DEFAULT_URL


def _watch(ctx: Context, sid: str, syncer: RepositorySync, interval: float) -> None:
    from ferry.triton.sync import StatusReport, watch

    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop ends as cleanly as Ctrl-C
    details = {"repository": str(syncer.repository), "triton_url": syncer.control.url}
    status = StatusReport(ctx.store, sid, details, ctx.settings.heartbeat_interval)
    console.print(
        f"syncing {syncer.repository} with Triton at {syncer.control.url} ({syncer.control.protocol}); Ctrl-C stops",
        highlight=False,
    )
    try:
        watch(syncer, ctx.store, sid, interval, _line, status)
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        status.close()


def _line(text: str) -> None:
    print(text, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
