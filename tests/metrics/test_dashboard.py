"""The Grafana dashboard: panels, queries over the metric contract only, custom panels, and Prometheus parsing it."""

from __future__ import annotations

import json
import re

import pytest

from ferry.control.spec import CanarySpec, EndpointSpec, MetricSpec, MetricVariable, ServiceConfig
from ferry.metrics.dashboard import build_dashboard, queries
from tests.prometheus import Prometheus, prometheus_binary

HISTOGRAMS = {
    "ferry_request_duration_seconds",
    "ferry_stage_duration_seconds",
    "ferry_batch_size",
    "ferry_batch_queue_wait_seconds",
}
SERIES = {
    "ferry_requests_total",
    "ferry_in_flight_requests",
    "ferry_overloaded_requests_total",
    "ferry_timed_out_requests_total",
    "ferry_model_load_seconds",
    "ferry_model_load_failures_total",
    "ferry_loaded_revision",
    "ferry_process_cpu_seconds_total",
    "ferry_process_resident_memory_bytes",
} | {f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
"""Every series name of docs/metrics.md's contract (histograms as their _bucket, _sum and _count series)."""
LLM_HISTOGRAMS = {
    "ferry_llm_time_to_first_token_seconds",
    "ferry_llm_inter_token_latency_seconds",
    "ferry_llm_e2e_request_latency_seconds",
}
LLM_SERIES = {
    "ferry_llm_num_requests_running",
    "ferry_llm_num_requests_waiting",
    "ferry_llm_prompt_tokens_total",
    "ferry_llm_generation_tokens_total",
    "ferry_llm_request_success_total",
} | {f"{name}_{suffix}" for name in LLM_HISTOGRAMS for suffix in ("bucket", "sum", "count")}
"""The LLM endpoints' series (docs/metrics.md, "LLM endpoints")."""
LLM_PANELS = [
    "Requests running and waiting",
    "Time to first token p50 / p99",
    "Inter-token latency p50 / p99",
    "End-to-end latency p50 / p99",
    "Prompt and generation tokens per second",
    "Finish reasons per second",
]
CUSTOM = {
    "score": "ferry_custom_score_bucket",
    "label": "ferry_custom_label_total",
    "latency_ms": "ferry_custom_latency_ms",
    "hits": "ferry_custom_hits_total",
}
NO_ENDPOINT_LABEL = {"ferry_process_cpu_seconds_total", "ferry_process_resident_memory_bytes", "ferry_loaded_revision"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SERVICE_ID = "0ef309bad2e345289573d30c4bf72e96"


def service(batching: bool = True, llm: bool = False) -> ServiceConfig:
    """Two endpoints (one batching, one with a '.' to escape) and custom variables of all four kinds; with ``llm``
    also an llm endpoint, a vllm one with a version and a '.', and a canary over both."""
    aux = {"max_batch_size": 8} if batching else {}
    variables = {
        "sentiment": {
            "score": MetricVariable(kind="scalar", buckets=(0.0, 0.5, 1.0)),
            "label": MetricVariable(kind="enum", values=("positive", "negative")),
        },
        "ranker.v2/*": {"latency_ms": MetricVariable(kind="value"), "hits": MetricVariable(kind="counter")},
    }
    endpoints = {
        "sentiment": EndpointSpec(name="sentiment", engine="custom"),
        "ranker.v2/1": EndpointSpec(name="ranker.v2", version="1", engine="custom", aux_config=aux),
    }
    canaries: dict[str, CanarySpec] = {}
    if llm:
        endpoints["chat"] = EndpointSpec(name="chat", engine="llm", model_id="m1")
        endpoints["chat.big/2"] = EndpointSpec(name="chat.big", version="2", engine="vllm", model_id="m2")
        canaries["assistant"] = CanarySpec(
            endpoint="assistant", weights=(0.9, 0.1), input_endpoints=("chat", "chat.big/2")
        )
    return ServiceConfig(
        endpoints=endpoints,
        canaries=canaries,
        metrics={key: MetricSpec(endpoint=key, variables=v) for key, v in variables.items()},
    )


def panels(dashboard: dict) -> list[dict]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def rows(dashboard: dict) -> dict[str, list[dict]]:
    """Each row's title and the panels under it (rows are open: their panels follow them at the top level)."""
    found: dict[str, list[dict]] = {}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = found.setdefault(panel["title"], [])
        else:
            current.append(panel)
    return found


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(ferry_[a-z0-9_]+)", expr))


def test_every_panel_queries_the_contract_metrics_of_the_current_endpoints():
    dashboard = build_dashboard(service(), "ferry: test", SERVICE_ID)
    assert json.loads(json.dumps(dashboard)) == dashboard
    assert dashboard["uid"] == f"ferry-{SERVICE_ID}" and len(dashboard["uid"]) <= 40
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["title"] == "ferry: test"
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")

    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["refId"], panel["title"]
            names = metric_names(target["expr"])
            assert names and names <= SERIES | set(CUSTOM.values()), (panel["title"], names - SERIES)
            assert set(re.findall(r"\[([^\]]*)\]", target["expr"])) <= {"$__rate_interval"}, target["expr"]
            if panel["type"] == "timeseries" and not names & NO_ENDPOINT_LABEL:  # heatmap rows are {{le}}
                assert target["legendFormat"].startswith("{{endpoint}}/{{version}}"), target
    everything = "\n".join(queries(dashboard))
    assert 'endpoint=~"ranker\\\\.v2|sentiment"' in everything  # the regex ranker\.v2, escaped for PromQL
    assert 'code!~"2.."' in everything and "histogram_quantile(0.99, " in everything
    units = {panel["title"]: panel["fieldConfig"]["defaults"].get("unit") for panel in panels(dashboard)}
    assert units["Request rate"] == "reqps" and units["Latency p50 / p90 / p99"] == "s"
    assert units["Memory per process (resident)"] == "bytes"
    assert [panel["type"] for panel in panels(dashboard)].count("heatmap") == 1


def test_one_panel_per_custom_variable_with_its_metric():
    dashboard = build_dashboard(service(), "t", SERVICE_ID)
    for variable, series in CUSTOM.items():
        showing = [p for p in panels(dashboard) if any(series in t["expr"] for t in p["targets"])]
        assert len(showing) == 1, (variable, [p["title"] for p in showing])
        assert showing[0]["title"].startswith(variable)
    by_title = {panel["title"]: [t["expr"] for t in panel["targets"]] for panel in panels(dashboard)}
    assert len(by_title["score (scalar)"]) == 3 and all("histogram_quantile" in e for e in by_title["score (scalar)"])
    assert by_title["label (enum)"] == [
        'sum by (endpoint, version, value) (rate(ferry_custom_label_total{endpoint=~"sentiment"}[$__rate_interval]))'
    ]
    assert by_title["latency_ms (value)"] == ['ferry_custom_latency_ms{endpoint=~"ranker\\\\.v2"}']
    assert by_title["hits (counter)"][0].startswith("sum by (endpoint, version) (rate(ferry_custom_hits_total{")


def test_batch_panels_only_when_some_endpoint_batches():
    batching = "\n".join(queries(build_dashboard(service(batching=True), "t", SERVICE_ID)))
    plain = "\n".join(queries(build_dashboard(service(batching=False), "t", SERVICE_ID)))
    assert "ferry_batch_size_bucket" in batching and "ferry_batch_queue_wait_seconds_bucket" in batching
    assert "ferry_batch" not in plain


def test_an_llm_endpoint_adds_a_row_of_llm_panels_per_endpoint_and_version():
    dashboard = build_dashboard(service(llm=True), "t", SERVICE_ID)
    llm = rows(dashboard)["LLM generation"]
    assert [panel["title"] for panel in llm] == LLM_PANELS
    for panel in llm:
        assert panel["datasource"] == DATASOURCE and panel["type"] == "timeseries", panel["title"]
        for target in panel["targets"]:
            assert metric_names(target["expr"]) <= LLM_SERIES, target["expr"]
            # only the LLM endpoints: the canary's traffic is counted under the endpoint that served it
            assert 'endpoint=~"chat|chat\\\\.big"' in target["expr"], target["expr"]
            assert target["legendFormat"].startswith("{{endpoint}}/{{version}} "), target
            assert "sum by (endpoint, version" in target["expr"], target["expr"]
    by_title = {panel["title"]: panel for panel in llm}
    ttft = [t["expr"] for t in by_title["Time to first token p50 / p99"]["targets"]]
    assert [e.split(",")[0] for e in ttft] == ["histogram_quantile(0.5", "histogram_quantile(0.99"]
    assert all("ferry_llm_time_to_first_token_seconds_bucket" in e for e in ttft)
    [finished] = by_title["Finish reasons per second"]["targets"]
    assert "by (endpoint, version, finished_reason)" in finished["expr"]
    assert finished["legendFormat"].endswith("{{finished_reason}}")
    tokens = {
        t["legendFormat"].split()[-1]: t["expr"] for t in by_title["Prompt and generation tokens per second"]["targets"]
    }
    assert "rate(ferry_llm_prompt_tokens_total{" in tokens["prompt"]
    assert "rate(ferry_llm_generation_tokens_total{" in tokens["generation"]
    units = {panel["title"]: panel["fieldConfig"]["defaults"]["unit"] for panel in llm}
    assert units["Inter-token latency p50 / p99"] == "s" and units["Requests running and waiting"] == "short"


def test_no_llm_row_without_an_llm_endpoint():
    dashboard = build_dashboard(service(), "t", SERVICE_ID)
    assert "LLM generation" not in rows(dashboard)
    assert not any("ferry_llm_" in expr for expr in queries(dashboard))
    with_llm = build_dashboard(service(llm=True), "t", SERVICE_ID)
    others = {
        title: [p["title"] for p in found] for title, found in rows(with_llm).items() if title != "LLM generation"
    }
    assert others == {title: [p["title"] for p in found] for title, found in rows(dashboard).items()}


def test_a_service_without_endpoints_gets_the_built_in_panels_for_any_endpoint():
    dashboard = build_dashboard(ServiceConfig(), "empty", "s1")
    titles = [panel["title"] for panel in panels(dashboard)]
    assert {"Request rate", "Error rate (non-2xx)", "Latency heatmap", "CPU per process"} <= set(titles)
    assert all('endpoint=~".+"' in expr for expr in queries(dashboard) if "endpoint" in expr)
    assert not any("ferry_custom_" in expr or "ferry_batch" in expr for expr in queries(dashboard))
    assert dashboard["uid"] == "ferry-s1"


@pytest.mark.parametrize("llm", [False, True])
def test_panels_tile_the_grid_without_overlapping(llm: bool):
    cells: set[tuple[int, int]] = set()
    for panel in build_dashboard(service(llm=llm), "t", SERVICE_ID)["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
    ids = [panel["id"] for panel in build_dashboard(service(llm=llm), "t", SERVICE_ID)["panels"]]
    assert len(set(ids)) == len(ids)


def test_the_same_config_gives_the_same_dashboard():
    assert build_dashboard(service(), "t", SERVICE_ID) == build_dashboard(service(), "t", SERVICE_ID)
    assert build_dashboard(service(), "t", "other")["uid"] != build_dashboard(service(), "t", SERVICE_ID)["uid"]


def test_prometheus_accepts_every_query():
    prometheus_binary()
    exprs = queries(build_dashboard(service(llm=True), "t", SERVICE_ID))
    assert any("ferry_llm_" in expr for expr in exprs)
    with Prometheus([]) as prom:
        for expr in exprs:
            prom.query(expr.replace("$__rate_interval", "1m"))  # raises with Prometheus' parse error
    assert len(exprs) >= 25


@pytest.mark.parametrize("name", ["a-b", "model.v1", "x_1"])
def test_endpoint_names_are_escaped_for_the_regex(name: str):
    config = ServiceConfig(endpoints={name: EndpointSpec(name=name, engine="custom")})
    [expr, *_] = queries(build_dashboard(config, "t", "s"))
    pattern = re.search(r'endpoint=~"([^"]*)"', expr).group(1).encode().decode("unicode_escape")
    assert re.fullmatch(pattern, name)
    assert not re.fullmatch(pattern, name.replace(".", "x") + "y")
    if "." in name:
        assert not re.fullmatch(pattern, name.replace(".", "x")), f"{pattern!r}: '.' left unescaped"
