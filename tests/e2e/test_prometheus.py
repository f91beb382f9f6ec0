"""A real Prometheus scrapes a real `ferry serve`; every query of the exported Grafana dashboard returns data, the
LLM row's numbers after a few chats with a tiny Llama (plain and streamed)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ferry.metrics.dashboard import queries
from tests.conftest import Ferry
from tests.e2e.conftest import FAST_POLL
from tests.e2e.test_metrics import ENDPOINT, add_example_metrics, sample, scrape, sklearn_endpoint
from tests.llm.tiny import build_tiny_llama
from tests.prometheus import Prometheus
from tests.server import Server

pytestmark = pytest.mark.e2e

RANGE = "30s"
"""What Grafana would put for $__rate_interval at a 1 s scrape interval, give or take."""
LLM = "chat"
CHAT = "/serve/openai/v1/chat/completions"
ASK = {"model": LLM, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0}
"""Greedy, so the tiny model gives the same answer every run."""
LLM_QUERIES = 11
"""Running and waiting, three histograms at p50 and p99, prompt and generation tokens, finish reasons."""


@dataclass(frozen=True)
class Scraped:
    """The module's `ferry serve`, the Prometheus scraping it every second, and the exported dashboard's queries."""

    server: Server
    prom: Prometheus
    exprs: list[str]


@pytest.fixture(scope="module")
def scraped(
    e2e_home: Path, e2e_ferry: Ferry, e2e_service: str, sklearn_example_model: Path, tmp_path_factory
) -> Iterator[Scraped]:
    """The sklearn example (batching, custom statistics) and a tiny Llama as LLM endpoint `chat`, exported and
    served once for the module: its counters are shared, so a test counts what it adds."""
    sklearn_endpoint(e2e_ferry, sklearn_example_model, "max_batch_size=8")
    add_example_metrics(e2e_ferry)
    tiny = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")
    e2e_ferry("model", "upload", "--name", "tiny", "--project", "llm", "--path", str(tiny))
    e2e_ferry("model", "add", "--engine", "llm", "--endpoint", LLM, "--name", "tiny", "--project", "llm",
              "--aux-config", "max_model_len=256")  # fmt: skip
    out = e2e_home.parent / "dashboard.json"
    e2e_ferry("dashboard", "export", "--output", str(out))
    exprs = queries(json.loads(out.read_text()))

    server = Server(e2e_home.parent, "--id", e2e_service, env=FAST_POLL)
    try:
        # Prometheus starts while the server loads its models; its first scrapes fail until the server is up.
        with Prometheus([f"127.0.0.1:{server.port}"], scrape_interval="1s") as prom:
            server.wait_ready(60)
            server.wait_for(lambda: chat(server).status_code == 200, 60, f"{LLM} answering")
            prom.wait_for_targets_up(30)
            yield Scraped(server, prom, exprs)
    finally:
        server.stop()


def chat(server: Server) -> httpx.Response:
    return server.post(CHAT, ASK)


def streamed_usage(server: Server) -> dict:
    """One streamed chat (server-sent events to `data: [DONE]`); the usage its last chunk reports."""
    body = {**ASK, "stream": True, "stream_options": {"include_usage": True}}
    with server.client.stream("POST", CHAT, json=body) as answer:
        assert answer.status_code == 200, answer.read()
        events = [line.removeprefix("data: ") for line in answer.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 3, events
    return json.loads(events[-2])["usage"]


def value(prom: Prometheus, promql: str) -> float:
    (series,) = prom.query(promql)
    return float(series["value"][1])


def test_dashboard_queries_return_data_from_a_real_prometheus(scraped: Scraped):
    server, prom = scraped.server, scraped.prom
    exprs = [q for q in scraped.exprs if "ferry_llm_" not in q]  # the LLM row's: the test below
    assert any("ferry_batch_size" in q for q in exprs) and any("ferry_custom_y_total" in q for q in exprs)

    n = 40
    for i in range(n):
        assert server.serve(ENDPOINT, {"x0": i % 4, "x1": 1}).status_code == 200
    for _ in range(2):
        assert server.serve(ENDPOINT, {"x0": "bad", "x1": 1}).status_code == 422
    ok = f'sum(ferry_requests_total{{endpoint="{ENDPOINT}", code="200"}})'
    prom.wait_for(lambda: prom.query(ok) and value(prom, ok) == n, 20, f"{ok} == {n}")

    empty = [q for q in exprs if not prom.wait_for_data(q.replace("$__rate_interval", RANGE), 15)]
    assert not empty, f"queries without data: {empty}"

    assert value(prom, f'sum(ferry_requests_total{{endpoint="{ENDPOINT}", code="422"}})') == 2
    assert value(prom, f'sum(ferry_custom_x0_count{{endpoint="{ENDPOINT}"}})') == n  # "bad" was dropped
    assert value(prom, f'sum(ferry_custom_x0_bucket{{endpoint="{ENDPOINT}", le="1.0"}})') == n / 2
    assert value(prom, f'sum(ferry_custom_y_total{{endpoint="{ENDPOINT}"}})') == n
    assert value(prom, f'sum(ferry_batch_size_sum{{endpoint="{ENDPOINT}"}})') == n + 2


def test_llm_panel_queries_return_numbers_from_a_real_prometheus(scraped: Scraped):
    server, prom = scraped.server, scraped.prom
    exprs = [q for q in scraped.exprs if "ferry_llm_" in q]
    assert len(exprs) == LLM_QUERIES, exprs

    before = scrape(server)
    answers = [chat(server) for _ in range(3)]
    assert all(answer.status_code == 200 for answer in answers), [answer.text for answer in answers]
    usages = [answer.json()["usage"] for answer in answers] + [streamed_usage(server)]
    generated = f'sum(ferry_llm_generation_tokens_total{{endpoint="{LLM}"}})'
    expected = sample(before, "ferry_llm_generation_tokens_total", endpoint=LLM) + sum(
        usage["completion_tokens"] for usage in usages
    )
    # Prometheus has scraped every token of the four answers: the rates below cover them.
    prom.wait_for(
        lambda: prom.query(generated) and value(prom, generated) == expected, 20, f"{generated} == {expected}"
    )
    prompt = f'sum(ferry_llm_prompt_tokens_total{{endpoint="{LLM}"}})'
    assert value(prom, prompt) - sample(before, "ferry_llm_prompt_tokens_total", endpoint=LLM) == sum(
        usage["prompt_tokens"] for usage in usages
    )
    ended = f'sum(ferry_llm_request_success_total{{endpoint="{LLM}", finished_reason=~"stop|length"}})'
    assert value(prom, ended) - ended_before(before) == 4

    # No waiting: Prometheus holds the answers' last scrape, and RANGE reaches back before them.
    without = [q for q in exprs if not numbers(prom, q.replace("$__rate_interval", RANGE))]
    assert not without, f"queries without numbers: {without}"


def ended_before(samples: dict) -> float:
    name = "ferry_llm_request_success_total"
    return sum(sample(samples, name, endpoint=LLM, finished_reason=reason) for reason in ("stop", "length"))


def numbers(prom: Prometheus, promql: str) -> bool:
    """Whether ``promql`` returns series, every one a number (a quantile over no observations is NaN)."""
    found = prom.query(promql)
    return bool(found) and not any(math.isnan(float(series["value"][1])) for series in found)
