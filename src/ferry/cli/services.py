"""Service commands: create, list, config, history, rollback, status."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from ferry.cli.context import Context
from ferry.cli.output import console, emit_json, table, when

if TYPE_CHECKING:
    from ferry.control.store import InstanceRecord


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("create", parents=[common], help="create a serving service and print its id")
    p.add_argument("--name", required=True, help="service name (need not be unique: the id is what counts)")
    p.add_argument("--project", default="", help="project the service belongs to")
    p.add_argument("--tags", nargs="*", default=[], help="free-form tags")
    p.set_defaults(func=create)

    p = sub.add_parser("list", parents=[common], help="list services with their ids, revision and instances")
    _json_flag(p)
    p.set_defaults(func=list_services)

    p = sub.add_parser("config", parents=[common], help="show or change service-wide settings")
    p.add_argument("--base-serving-url", help="public URL of the serving instances (for send_request)")
    p.add_argument("--triton-grpc-server", help="HOST:PORT of the Triton server for --engine triton")
    p.add_argument("--metric-log-freq", type=float, help="fraction of requests whose metrics are logged (0-1)")
    _json_flag(p)
    p.set_defaults(func=config)

    p = sub.add_parser("history", parents=[common], help="list the service's revisions: number, time, change")
    _json_flag(p)
    p.set_defaults(func=history)

    p = sub.add_parser("rollback", parents=[common], help="re-activate an old revision as a new one")
    p.add_argument("--to", type=int, required=True, metavar="REVISION", help="revision number to restore")
    p.set_defaults(func=rollback)

    p = sub.add_parser("status", parents=[common], help="show the service's live instances and their state")
    _json_flag(p)
    p.set_defaults(func=status)


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document and nothing else")


def create(ctx: Context, args: argparse.Namespace) -> None:
    record = ctx.store.create_service(args.name, args.project, args.tags)
    print(f"New Serving Service created: id={record.id}")


def list_services(ctx: Context, args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    for svc in ctx.store.list_services():
        live = ctx.store.list_instances(svc.id)
        rows.append(
            {
                "id": svc.id,
                "name": svc.name,
                "project": svc.project,
                "tags": svc.tags,
                "created": svc.created_at,
                "revision": ctx.store.head(svc.id),
                "instances": len(live),
            }
        )
    if args.json:
        return emit_json(rows)
    columns = ("id", "name", "project", "revision", "instances", "created")
    table("services", columns, [[r[c] if c != "created" else when(r[c]) for c in columns] for r in rows])


def config(ctx: Context, args: argparse.Namespace) -> None:
    changes = {
        "base_serving_url": args.base_serving_url,
        "triton_grpc_server": args.triton_grpc_server,
        "metric_log_freq": args.metric_log_freq,
    }
    sid = ctx.service.id
    if any(v is not None for v in changes.values()):
        outcome = ctx.control.configure(sid, **changes)
        console.print(f"revision {outcome.revision.number}: {outcome.revision.summary}", highlight=False)
        settings = outcome.revision.config.settings
    else:
        settings = ctx.store.get_revision(sid).config.settings
    if args.json:
        return emit_json(settings.model_dump())
    table(f"settings of service {sid}", ("setting", "value"), list(settings.model_dump().items()))


def history(ctx: Context, args: argparse.Namespace) -> None:
    revs = ctx.store.list_revisions(ctx.service.id)
    if args.json:
        return emit_json(
            [{"revision": r.number, "created": r.created_at, "summary": r.summary, "author": r.author} for r in revs]
        )
    table(
        f"history of service {ctx.service.id}",
        ("revision", "time", "by", "change"),
        [(r.number, when(r.created_at), r.author or "", r.summary) for r in revs],
    )


def rollback(ctx: Context, args: argparse.Namespace) -> None:
    outcome = ctx.control.rollback(ctx.service.id, args.to)
    print(f"revision {outcome.revision.number}: {outcome.revision.summary}")


RECENT_IN_TABLE = 5
"""Recent log lines the table shows per instance; --json has all the instance kept."""


def status(ctx: Context, args: argparse.Namespace) -> None:
    sid = ctx.service.id
    head = ctx.store.head(sid)
    live = ctx.store.list_instances(sid)
    now = time.time()
    doc: dict[str, Any] = {"service": sid, "revision": head, "instances": [_instance(i, now) for i in live]}
    if args.json:
        return emit_json(doc)
    console.print(f"service {sid}: revision {head}, {len(live)} live instance(s)", highlight=False)
    table(
        "instances",
        ("id", "host", "pid", "revision", "up since (UTC)", "heartbeat age (s)", "cpu %", "rss MB"),
        [
            (
                i["id"],
                i["host"],
                i["pid"],
                i["revision"],
                f"{_utc(i['started_at'])} ({_age(i['uptime_s'])} ago)",
                i["heartbeat_age_s"],
                i["state"].get("cpu_percent", ""),
                round(i["state"].get("rss_bytes", 0) / 2**20),
            )
            for i in doc["instances"]
        ],
    )
    rows = []
    for inst in doc["instances"]:
        for key, ep in sorted(inst["state"].get("endpoints", {}).items()):
            rows.append(
                (inst["id"][:8], key, ep["state"], ep.get("requests", ""), ep.get("errors", ""), ep.get("error", ""))
            )
    table("endpoints per instance", ("instance", "endpoint", "state", "requests", "errors", "error"), rows)
    _shadows(doc)
    _ray(doc)
    _recent(doc)


def _instance(i: InstanceRecord, now: float) -> dict[str, Any]:
    """One instance as `status --json` shows it; up since is the serving process's start (UTC in `up_since`)."""
    started = float(i.state.get("started_at", i.started_at))
    return {
        "id": i.id,
        "host": i.host,
        "pid": i.pid,
        "revision": i.revision,
        "started_at": started,
        "up_since": _utc(started),
        "uptime_s": round(now - started, 1),
        "heartbeat_age_s": round(now - i.heartbeat_at, 1),
        "state": i.state,
    }


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def _age(seconds: float) -> str:
    """3 s, 4 min 10 s, 2 h 5 min, 3 d 4 h."""
    s = max(0, int(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if s >= size:
            return f"{s // size} {unit} {s % size // sub_size} {sub}"
    return f"{s} s"


def _recent(doc: dict[str, Any]) -> None:
    rows = []
    for inst in doc["instances"]:
        lines = inst["state"].get("log", [])
        if len(lines) > RECENT_IN_TABLE:
            rows.append((inst["id"][:8], f"({len(lines) - RECENT_IN_TABLE} earlier: see status --json)"))
        rows.extend((inst["id"][:8], line) for line in lines[-RECENT_IN_TABLE:])
    table("recent warnings and errors per instance", ("instance", "log"), rows)


def _ray(doc: dict[str, Any]) -> None:
    """What `ferry serve --ray` reports from Ray Serve: each application's deployments and replicas by state."""
    rows = [
        (app, name, d["status"], ", ".join(f"{n} {state.lower()}" for state, n in sorted(d["replicas"].items())))
        for inst in doc["instances"]
        for app, found in sorted(inst["state"].get("ray", {}).items())
        for name, d in sorted(found["deployments"].items())
    ]
    if rows:
        table("Ray Serve deployments", ("application", "deployment", "status", "replicas"), rows)


def _shadows(doc: dict[str, Any]) -> None:
    shadows = [
        (
            inst["id"][:8],
            name,
            sh["target"],
            sh["sent"],
            sh["dropped"],
            sh["errors"],
            sh["agreement"],
            sh["latency_ms"]["p99"],
        )  # fmt: skip
        for inst in doc["instances"]
        for name, sh in sorted(inst["state"].get("shadows", {}).items())
    ]
    if shadows:
        columns = ("instance", "endpoint", "shadow target", "sent", "dropped", "errors", "agreement", "p99 ms")
        table("shadows per instance", columns, shadows)
