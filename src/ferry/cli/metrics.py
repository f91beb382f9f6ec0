"""`ferry metrics add|list|remove`: which request variables each endpoint logs, and how often (ClearML's grammar)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ferry.cli.context import Context
from ferry.cli.output import console, emit_json, table, warn
from ferry.errors import InvalidInput

if TYPE_CHECKING:
    from ferry.control.spec import MetricVariable

NO_VARIABLE: list[tuple[str, MetricVariable | None]] = [("", None)]
"""The one table row of an endpoint that logs no variable (only iterated, never changed)."""

ENDPOINT_HELP = "the endpoint: NAME, NAME/VERSION, or NAME/* for every version of NAME (the unversioned one too)"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    metrics = sub.add_parser(
        "metrics",
        parents=[common],
        help="custom statistics: the request variables each endpoint logs to Prometheus",
        description="Configure the variables your preprocess code reports with collect_custom_statistics_fn. "
        "Each change is a new revision that running instances pick up like any other.",
    )
    msub = metrics.add_subparsers(dest="metrics_command", metavar="COMMAND", required=True)
    _add(msub, common)
    p = msub.add_parser("list", parents=[common], help="list the metric config of every endpoint")
    p.add_argument("--json", action="store_true", help="print one JSON document and nothing else")
    p.set_defaults(func=list_metrics)
    p = msub.add_parser("remove", parents=[common], help="remove an endpoint's metric config, or one of its variables")
    p.add_argument("--endpoint", required=True, metavar="NAME[/VERSION|/*]", help=ENDPOINT_HELP)
    p.add_argument("--variable", metavar="NAME", help="remove only this variable (default: the whole config)")
    p.set_defaults(func=remove)


def _add(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = msub.add_parser(
        "add",
        parents=[common],
        help="log request variables of an endpoint (merged into its config: same name replaced)",
        description="Variables named here are merged into ENDPOINT's metric config; a variable of the same name "
        "is replaced. Names use letters, digits and '_' and do not start with a digit. The endpoint need not "
        "exist yet.",
    )
    p.add_argument("--endpoint", required=True, metavar="NAME[/VERSION|/*]", help=ENDPOINT_HELP)
    p.add_argument(
        "--log-freq",
        type=float,
        help="fraction of requests sampled, 0 to 1 (default: the service's `config --metric-log-freq`)",
    )
    p.add_argument(
        "--variable-scalar",
        nargs="+",
        default=[],
        metavar="NAME=BUCKETS",
        help="histogram of a number: NAME=a,b,c (bucket bounds) or NAME=MIN/MAX/STEP",
    )
    p.add_argument(
        "--variable-enum", nargs="+", default=[], metavar="NAME=A,B", help="count per listed value (others: other)"
    )
    p.add_argument("--variable-value", nargs="+", default=[], metavar="NAME", help="gauge of the last value")
    p.add_argument("--variable-counter", nargs="+", default=[], metavar="NAME", help="counter, increased by each value")
    p.set_defaults(func=add)


def add(ctx: Context, args: argparse.Namespace) -> None:
    from ferry.control.metrics_config import parse_variables
    from ferry.control.service import validated
    from ferry.control.spec import MetricSpec

    variables = parse_variables(args.variable_scalar, args.variable_enum, args.variable_value, args.variable_counter)
    if not variables and args.log_freq is None:
        raise InvalidInput("nothing to add: give --log-freq or at least one --variable-scalar/-enum/-value/-counter")
    if args.log_freq is not None and not 0 <= args.log_freq <= 1:
        raise InvalidInput(f"--log-freq {args.log_freq:g}: give the sampled fraction of requests, from 0 to 1")
    spec = validated(MetricSpec, endpoint=args.endpoint, log_freq=args.log_freq, variables=variables)
    outcome = ctx.control.set_metrics(ctx.service.id, spec)
    for message in outcome.warnings:
        warn(message)
    print(f"revision {outcome.revision.number}: {outcome.revision.summary}")


def remove(ctx: Context, args: argparse.Namespace) -> None:
    outcome = ctx.control.remove_metrics(ctx.service.id, args.endpoint, args.variable)
    print(f"revision {outcome.revision.number}: {outcome.revision.summary}")


def list_metrics(ctx: Context, args: argparse.Namespace) -> None:
    revision = ctx.store.get_revision(ctx.service.id)
    config = revision.config
    default = config.settings.metric_log_freq
    if args.json:
        doc = config.model_dump(mode="json", include={"metrics"})
        return emit_json({"revision": revision.number, "metric_log_freq": default, **doc})
    console.print(
        f"service {ctx.service.id}, revision {revision.number}, default log freq {default:g}", highlight=False
    )
    rows = [
        (key, _freq(spec.log_freq, default), name, *_detail(variable))
        for key, spec in sorted(config.metrics.items())
        for name, variable in (sorted(spec.variables.items()) or NO_VARIABLE)
    ]
    table("metrics", ("endpoint", "log freq", "variable", "type", "buckets / values"), rows)


def _freq(own: float | None, default: float) -> str:
    return f"{default:g} (default)" if own is None else f"{own:g}"


def _detail(variable: MetricVariable | None) -> tuple[str, str]:
    if variable is None:
        return "", ""
    return variable.kind, _values(variable)


def _values(variable: MetricVariable) -> str:
    if variable.kind == "scalar":
        return ",".join(f"{b:g}" for b in variable.buckets)
    return ",".join(variable.values)
