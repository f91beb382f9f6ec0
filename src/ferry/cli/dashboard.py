"""`ferry dashboard export`: the Grafana dashboard of the service's current endpoints and custom statistics."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ferry.cli.context import Context
from ferry.cli.output import err_console, warn
from ferry.errors import InvalidInput


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    dashboard = sub.add_parser(
        "dashboard",
        parents=[common],
        help="Grafana dashboards of the service's Prometheus metrics",
        description="Grafana dashboards of what `ferry serve` reports on GET /metrics.",
    )
    dsub = dashboard.add_subparsers(dest="dashboard_command", metavar="COMMAND", required=True)
    p = dsub.add_parser(
        "export",
        parents=[common],
        help="print (or write) a Grafana dashboard for the service's current endpoints",
        description="Build a Grafana dashboard (request and error rate, latency quantiles and heatmap, time per "
        "stage, batching, overload, processes, one panel per custom variable; with an llm or vllm endpoint, its "
        "requests running and waiting, time to first token, inter-token and end-to-end latency, tokens per second "
        "and finish reasons) for the endpoints of the service's current revision. Its queries use a Prometheus "
        "data source variable, so it imports into any Grafana; its uid comes from the service id, so exporting "
        "again replaces it. Export again after adding endpoints or metrics.",
    )
    p.add_argument("--output", "-o", metavar="FILE", help="write the JSON to FILE (default: print it to stdout)")
    p.add_argument("--title", metavar="TEXT", help="the dashboard's title (default: ferry: <service name>)")
    p.set_defaults(func=export)


def export(ctx: Context, args: argparse.Namespace) -> None:
    from ferry.metrics.dashboard import build_dashboard, endpoint_names, panel_count

    output = None if args.output is None else _checked_output(args.output)
    service = ctx.service
    config = ctx.store.get_revision(service.id).config
    names = endpoint_names(config)
    if not names:
        warn(
            f"service {service.name!r} has no endpoints yet: the panels show every endpoint Prometheus scrapes; "
            "export again after `ferry model add`"
        )
    dashboard = build_dashboard(config, args.title or f"ferry: {service.name}", service.id)
    text = json.dumps(dashboard, indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    _write(output, text)
    shown = ", ".join(names) if names else "none yet"
    err_console.print(
        f"wrote {args.output}: {panel_count(dashboard)} panels for {len(names)} endpoint(s) ({shown})",
        highlight=False,
        markup=False,
    )


def _checked_output(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.parent.is_dir():
        raise InvalidInput(f"cannot write {name}: no folder {path.parent}; create it or give another --output")
    return path


def _write(path: Path, text: str) -> None:
    # Grafana re-reads its dashboard folder every few seconds: it must never see a half-written file.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
