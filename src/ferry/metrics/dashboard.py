"""The Grafana dashboard of a service's Prometheus metrics, built with grafana-foundation-sdk's builders."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

from grafana_foundation_sdk.builders import common as viz
from grafana_foundation_sdk.builders import dashboard as board
from grafana_foundation_sdk.builders import heatmap, prometheus, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef, VariableOption
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from ferry.control.engine_names import GENERATIVE, effective_max_batch_size
from ferry.control.spec import MetricVariable, ServiceConfig
from ferry.metrics.custom import metric_name

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
PROVISIONED_DATASOURCE = "prometheus"
"""The uid of deploy/grafana/provisioning's data source: the variable's default, other Grafanas pick their own."""
RATE = "[$__rate_interval]"
BY = "endpoint, version"
LEGEND = "{{endpoint}}/{{version}}"
PROCESS_LEGEND = "{{instance}} pid {{pid}}"
QUANTILES = (0.5, 0.9, 0.99)
LLM_QUANTILES = (0.5, 0.99)
CUSTOM_UNITS = {"scalar": "none", "enum": "cps", "value": "none", "counter": "cps"}
Query = tuple[str, str]
"""A PromQL expression and its legend."""


def build_dashboard(config: ServiceConfig, title: str, service_id: str | None = None) -> dict[str, Any]:
    """The dashboard JSON for ``config``'s endpoints and custom variables, ready for ``json.dumps``.

    The uid comes from ``service_id`` (else from the title), so a re-export replaces the dashboard in Grafana.
    """
    builder = (
        board.Dashboard(title)
        .uid(dashboard_uid(service_id or title))
        .tags(["ferry"])
        .time("now-1h", "now")
        .refresh("10s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .annotations([])
        .with_variable(_datasource_variable())
    )
    for row, panels in _sections(config):
        builder.with_row(board.Row(row))
        for panel in panels:
            builder.with_panel(panel)
    model = builder.build()
    for number, built in enumerate(model.panels or [], 1):
        built.id_val = number  # Grafana links and edits panels by id: unique and stable per layout
    return json.loads(json.dumps(model, cls=JSONEncoder))


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression in ``dashboard``, in panel order (rows' nested panels included)."""
    return [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets") or ()]


def panel_count(dashboard: dict[str, Any]) -> int:
    """How many panels show data (rows not counted)."""
    return sum(1 for panel in _panels(dashboard) if panel.get("type") != "row")


def endpoint_names(config: ServiceConfig) -> list[str]:
    """The ``endpoint`` label values of the service: endpoint and canary names."""
    return sorted({spec.name for spec in config.endpoints.values()} | set(config.canaries))


def dashboard_uid(service_id: str) -> str:
    """``ferry-<id>``, or a hash of it where the id would break Grafana's uid rule (40 chars of [A-Za-z0-9_-])."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,34}", service_id):
        return f"ferry-{service_id}"
    return "ferry-" + hashlib.sha256(service_id.encode()).hexdigest()[:20]


def llm_endpoint_names(config: ServiceConfig) -> list[str]:
    """The ``endpoint`` label values of the ``ferry_llm_*`` series: the endpoints whose engine is llm or vllm (no
    canary names: a canary's requests are counted under the endpoint that served them)."""
    return sorted({spec.name for spec in config.endpoints.values() if spec.engine in GENERATIVE})


def batching(config: ServiceConfig) -> bool:
    """Whether some endpoint batches (``max_batch_size`` over 1, given or by its engine's default)."""
    return any(
        effective_max_batch_size(spec.engine, spec.aux_config)[0] > 1 and spec.engine != "triton"
        for spec in config.endpoints.values()
    )


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels") or ():
        yield panel
        yield from panel.get("panels") or ()


# --- PromQL ------------------------------------------------------------------------------------------------


def selector(names: list[str]) -> str:
    """``endpoint=~"a|b"`` with the names regex-escaped; any endpoint when there are none yet."""
    if not names:
        return 'endpoint=~".+"'
    # re.escape for the regex, then doubled backslashes for PromQL's double-quoted string.
    pattern = "|".join(re.escape(name).replace("\\", "\\\\") for name in names)
    return f'endpoint=~"{pattern}"'


def _rate(metric: str, matchers: str) -> str:
    return f"rate({metric}{{{matchers}}}{RATE})" if matchers else f"rate({metric}{RATE})"


def _sum_rate(metric: str, matchers: str, by: str = BY) -> str:
    return f"sum by ({by}) ({_rate(metric, matchers)})"


def _quantile(q: float, histogram: str, matchers: str, by: str = BY) -> str:
    return f"histogram_quantile({q:g}, {_sum_rate(histogram + '_bucket', matchers, by + ', le')})"


def _mean(histogram: str, matchers: str, by: str = BY) -> str:
    return f"{_sum_rate(histogram + '_sum', matchers, by)} / {_sum_rate(histogram + '_count', matchers, by)}"


def _quantiles(
    histogram: str, matchers: str, by: str = BY, legend: str = LEGEND, quantiles: tuple[float, ...] = QUANTILES
) -> list[Query]:
    return [(_quantile(q, histogram, matchers, by), f"{legend} p{q * 100:g}") for q in quantiles]


# --- panels ------------------------------------------------------------------------------------------------


def _sections(config: ServiceConfig) -> list[tuple[str, list[Builder]]]:
    sel = selector(endpoint_names(config))
    llm_names = llm_endpoint_names(config)
    sections = [
        ("Traffic", _traffic(sel)),
        ("Latency", _latency(sel)),
        ("LLM generation", _llm(selector(llm_names))) if llm_names else None,
        ("Batching", _batching(sel)) if batching(config) else None,
        ("Overload and model loads", _overload(sel)),
        ("Processes", _processes()),
        ("Custom statistics", _custom(config)) if config.metrics else None,
    ]
    return [section for section in sections if section is not None and section[1]]


def _traffic(sel: str) -> list[Builder]:
    errors = f'{sel}, code!~"2.."'
    return [
        _timeseries("Request rate", "reqps", [(_sum_rate("ferry_requests_total", sel), LEGEND)], 8),
        _timeseries(
            "Error rate (non-2xx)",
            "reqps",
            [(_sum_rate("ferry_requests_total", errors, f"{BY}, code"), f"{LEGEND} {{{{code}}}}")],
            8,
        ),
        _timeseries("In-flight requests", "short", [(f"sum by ({BY}) (ferry_in_flight_requests{{{sel}}})", LEGEND)], 8),
    ]


def _latency(sel: str) -> list[Builder]:
    stage = "ferry_stage_duration_seconds"
    by_stage = f"{BY}, stage"
    stage_legend = f"{LEGEND} {{{{stage}}}}"
    return [
        _timeseries("Latency p50 / p90 / p99", "s", _quantiles("ferry_request_duration_seconds", sel)),
        _heatmap("Latency heatmap", f"sum by (le) ({_rate('ferry_request_duration_seconds_bucket', sel)})"),
        _timeseries("Time per stage, p90", "s", [(_quantile(0.9, stage, sel, by_stage), stage_legend)]),
        _timeseries("Mean time per stage (stacked)", "s", [(_mean(stage, sel, by_stage), stage_legend)], stack=True),
    ]


def _batching(sel: str) -> list[Builder]:
    sizes = [
        (_mean("ferry_batch_size", sel), f"{LEGEND} mean"),
        (_quantile(0.9, "ferry_batch_size", sel), f"{LEGEND} p90"),
    ]
    return [
        _timeseries("Batch size (rows per model call)", "short", sizes),
        _timeseries("Batch queue wait", "s", _quantiles("ferry_batch_queue_wait_seconds", sel)),
    ]


def _llm(sel: str) -> list[Builder]:
    by_reason = f"{BY}, finished_reason"
    tokens = [
        (_sum_rate("ferry_llm_prompt_tokens_total", sel), f"{LEGEND} prompt"),
        (_sum_rate("ferry_llm_generation_tokens_total", sel), f"{LEGEND} generation"),
    ]
    return [
        _timeseries("Requests running and waiting", "short", _llm_queue(sel), 8),
        _timeseries("Time to first token p50 / p99", "s", _llm_quantiles("time_to_first_token_seconds", sel), 8),
        _timeseries("Inter-token latency p50 / p99", "s", _llm_quantiles("inter_token_latency_seconds", sel), 8),
        _timeseries("End-to-end latency p50 / p99", "s", _llm_quantiles("e2e_request_latency_seconds", sel), 8),
        _timeseries("Prompt and generation tokens per second", "count:tok/s", tokens, 8),
        _timeseries(
            "Finish reasons per second",
            "count:seq/s",
            [(_sum_rate("ferry_llm_request_success_total", sel, by_reason), f"{LEGEND} {{{{finished_reason}}}}")],
            8,
        ),
    ]


def _llm_queue(sel: str) -> list[Query]:
    return [
        (f"sum by ({BY}) (ferry_llm_num_requests_{state}{{{sel}}})", f"{LEGEND} {state}")
        for state in ("running", "waiting")
    ]


def _llm_quantiles(histogram: str, sel: str) -> list[Query]:
    return _quantiles(f"ferry_llm_{histogram}", sel, quantiles=LLM_QUANTILES)


def _overload(sel: str) -> list[Builder]:
    refused = [
        (_sum_rate("ferry_overloaded_requests_total", sel), f"{LEGEND} overloaded (503)"),
        (_sum_rate("ferry_timed_out_requests_total", sel), f"{LEGEND} timed out (504)"),
    ]
    failures = f"sum by ({BY}) (increase(ferry_model_load_failures_total{{{sel}}}{RATE}))"
    return [
        _timeseries("Overloaded and timed-out requests", "reqps", refused, 8),
        _timeseries("Model load time", "s", [(f"ferry_model_load_seconds{{{sel}}}", LEGEND)], 8),
        _timeseries("Model load failures", "short", [(failures, LEGEND)], 8),
    ]


def _processes() -> list[Builder]:
    return [
        _timeseries(
            "CPU per process", "percentunit", [(_rate("ferry_process_cpu_seconds_total", ""), PROCESS_LEGEND)], 8
        ),
        _timeseries(
            "Memory per process (resident)", "bytes", [("ferry_process_resident_memory_bytes", PROCESS_LEGEND)], 8
        ),
        _timeseries("Loaded service revision", "none", [("ferry_loaded_revision", "{{instance}} {{pid}}")], 8),
    ]


def _custom(config: ServiceConfig) -> list[Builder]:
    return [
        _custom_panel(name, variable, selector(names))
        for name, (variable, names) in sorted(custom_variables(config).items())
    ]


def custom_variables(config: ServiceConfig) -> dict[str, tuple[MetricVariable, list[str]]]:
    """Each custom variable of the service: its definition and the endpoint names that log it."""
    found: dict[str, tuple[MetricVariable, list[str]]] = {}
    for key, spec in sorted(config.metrics.items()):
        endpoint = key.split("/", 1)[0]
        for name, variable in spec.variables.items():
            _, names = found.setdefault(name, (variable, []))
            if endpoint not in names:
                names.append(endpoint)
    return found


def _custom_panel(name: str, variable: MetricVariable, sel: str) -> Builder:
    metric = metric_name(name)
    if variable.kind == "scalar":
        targets = _quantiles(metric, sel)
    elif variable.kind == "enum":
        targets = [(_sum_rate(metric + "_total", sel, f"{BY}, value"), f"{LEGEND} {{{{value}}}}")]
    elif variable.kind == "value":
        targets = [(f"{metric}{{{sel}}}", LEGEND)]
    else:
        targets = [(_sum_rate(metric + "_total", sel), LEGEND)]
    return _timeseries(f"{name} ({variable.kind})", CUSTOM_UNITS[variable.kind], targets)


# --- builders ----------------------------------------------------------------------------------------------


def _datasource_variable() -> Builder:
    return (
        board.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(VariableOption(text="Prometheus", value=PROVISIONED_DATASOURCE))
    )


def _target(expr: str, legend: str, ref: int) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + ref)).datasource(DATASOURCE)


def _timeseries(title: str, unit: str, targets: list[Query], width: int = 12, stack: bool = False) -> Builder:
    legend = viz.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST).placement(common.LegendPlacement.BOTTOM)
    panel = (
        timeseries.Panel()
        .title(title)
        .description(_describe(targets))
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .fill_opacity(30 if stack else 10)
        .legend(legend.show_legend(True))
        .tooltip(viz.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
        .targets([_target(expr, text, n) for n, (expr, text) in enumerate(targets)])
    )
    if stack:
        panel.stacking(viz.StackingConfig().mode(common.StackingMode.NORMAL))
    return panel


def _heatmap(title: str, expr: str) -> Builder:
    target = _target(expr, "{{le}}", 0).format(PromQueryFormat.HEATMAP)
    return (
        heatmap.Panel()
        .title(title)
        .description(_describe([(expr, "")]))
        .datasource(DATASOURCE)
        .span(12)
        .height(8)
        .calculate(False)  # the buckets are Prometheus' own: show them, do not re-bucket
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .color(heatmap.HeatmapColorOptions().mode(HeatmapColorMode.SCHEME).scheme("Spectral").steps(64))
        .show_tooltip()
        .with_target(target)
    )


def _describe(targets: list[Query]) -> str:
    metrics = sorted({name for expr, _ in targets for name in re.findall(r"\b(ferry_\w+)", expr)})
    return "From " + ", ".join(metrics) + "."
