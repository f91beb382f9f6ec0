"""Built-in metrics and custom statistics counted exactly, in-process (the HTTP face: tests/e2e/test_metrics.py)."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from ferry.control.metrics_config import parse_variables
from ferry.control.spec import MetricSpec
from ferry.errors import Overloaded, Timeout, UserCodeError
from ferry.metrics.collectors import Metrics

SKLEARN = """
    class Preprocess:
        def preprocess(self, body, state, collect_custom_statistics_fn=None):
            return [[body["x0"], body["x1"]]]

        def postprocess(self, data, state, collect_custom_statistics_fn=None):
            return {"y": data.tolist()}
"""
REPORTER = """
    import time

    class Preprocess:
        def preprocess(self, body, state, collect_custom_statistics_fn=None):
            if collect_custom_statistics_fn:
                for values in body.get("stats", []):
                    collect_custom_statistics_fn(values)
            time.sleep(body.get("sleep", 0))
            return {"sampled": collect_custom_statistics_fn is not None}

        def process(self, data, state, collect_custom_statistics_fn=None):
            return data
"""


@pytest.fixture
def metered(service):
    """The ``service`` fixture with metrics on, as ``ferry serve`` has them."""
    service.plane.metrics = Metrics()
    return service


def run(service, endpoint: str, body, version: str | None = None):
    async def go():
        return await service.plane.infer(endpoint, version, body)

    return asyncio.run(go())


def value(service, name: str, **labels: str) -> float:
    """A sample as a scrape would read it now (what the request path recorded is flushed first)."""
    service.plane.refresh_metrics()
    if "endpoint" in labels:
        labels.setdefault("version", "")
    found = service.plane.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def add_metrics(service, endpoint: str, log_freq: float | None = None, **flags: list[str]) -> None:
    variables = parse_variables(**flags)
    service.control.set_metrics(service.id, MetricSpec(endpoint=endpoint, log_freq=log_freq, variables=variables))


def test_requests_latency_and_stages_counted_exactly(metered):
    metered.add("sk", "sklearn", code=metered.code(SKLEARN), model_id=metered.model())
    metered.apply()
    for _ in range(7):
        assert run(metered, "sk", {"x0": 1, "x1": 2}) == {"y": [1]}
    for _ in range(3):
        with pytest.raises(UserCodeError):
            run(metered, "sk", {"x0": "a", "x1": 2})  # the model refuses a string: 422
    with pytest.raises(UserCodeError):
        run(metered, "sk", {"x0": 1})  # preprocess raises KeyError: 422 before the model
    s = dict(endpoint="sk")
    assert value(metered, "ferry_requests_total", code="200", **s) == 7
    assert value(metered, "ferry_requests_total", code="422", **s) == 4
    assert value(metered, "ferry_request_duration_seconds_count", **s) == 11
    assert value(metered, "ferry_request_duration_seconds_sum", **s) > 0
    assert value(metered, "ferry_request_duration_seconds_bucket", le="+Inf", **s) == 11
    assert value(metered, "ferry_stage_duration_seconds_count", stage="preprocess", **s) == 10
    assert value(metered, "ferry_stage_duration_seconds_count", stage="model", **s) == 7
    assert value(metered, "ferry_stage_duration_seconds_count", stage="postprocess", **s) == 7
    assert value(metered, "ferry_model_load_seconds", **s) > 0
    assert value(metered, "ferry_model_load_failures_total", **s) == 0
    assert value(metered, "ferry_loaded_revision") == metered.store.head(metered.id)
    assert value(metered, "ferry_process_resident_memory_bytes", pid=str(os.getpid())) > 0


def test_unknown_endpoint_counted_without_its_name(metered):
    metered.add("sk", "sklearn", code=metered.code(SKLEARN), model_id=metered.model())
    metered.apply()
    for name in ("nope", "made-up-1", "made-up-2"):
        with pytest.raises(Exception, match="no endpoint"):
            run(metered, name, {})
    assert value(metered, "ferry_requests_total", endpoint="", code="404") == 3
    assert value(metered, "ferry_requests_total", endpoint="nope", code="404") == 0


def test_batch_sizes_and_queue_wait(metered):
    metered.add("sk", "sklearn", code=metered.code(SKLEARN), model_id=metered.model(), aux_config={
        "max_batch_size": 8, "max_queue_delay_ms": 50})  # fmt: skip
    metered.apply()

    async def burst():
        return await asyncio.gather(*(metered.plane.infer("sk", None, {"x0": i, "x1": 1}) for i in range(6)))

    assert len(asyncio.run(burst())) == 6
    s = dict(endpoint="sk")
    assert value(metered, "ferry_batch_size_sum", **s) == 6  # every row once, however they were grouped
    assert 1 <= value(metered, "ferry_batch_size_count", **s) <= 6
    assert value(metered, "ferry_batch_queue_wait_seconds_count", **s) == 6
    assert value(metered, "ferry_requests_total", code="200", **s) == 6


def test_timeouts_and_overload_counted(metered):
    code = metered.code(REPORTER)
    metered.add("slow", code=code, aux_config={"request_timeout_ms": 50})
    metered.add("narrow", code=code, aux_config={"max_queue_size": 1})
    metered.apply()
    with pytest.raises(Timeout):
        run(metered, "slow", {"sleep": 0.3})

    async def two_at_once():
        return await asyncio.gather(
            metered.plane.infer("narrow", None, {"sleep": 0.3}),
            metered.plane.infer("narrow", None, {}),
            return_exceptions=True,
        )

    first, second = asyncio.run(two_at_once())
    assert first == {"sampled": False} and isinstance(second, Overloaded)
    assert value(metered, "ferry_timed_out_requests_total", endpoint="slow") == 1
    assert value(metered, "ferry_requests_total", endpoint="slow", code="504") == 1
    assert value(metered, "ferry_overloaded_requests_total", endpoint="narrow") == 1
    assert value(metered, "ferry_requests_total", endpoint="narrow", code="503") == 1


def test_failed_load_counted(metered):
    broken = metered.code("class Preprocess:\n    def load(self, path):\n        raise OSError('disk')\n")
    metered.add("sk", "sklearn", code=broken, model_id=metered.model())
    metered.apply()
    assert value(metered, "ferry_model_load_failures_total", endpoint="sk") == 1


def test_custom_statistics_of_every_kind(metered):
    metered.add("r", code=metered.code(REPORTER))
    add_metrics(
        metered,
        "r",
        log_freq=1,
        scalars=["x0=0,1,2"],
        enums=["label=positive,negative"],
        values=["latency_ms"],
        counters=["hits"],
    )
    metered.apply()
    stats = [
        {"x0": 0.5, "label": "positive", "latency_ms": 12, "hits": 2},
        {"x0": 1.5, "label": "negative", "latency_ms": 7.5, "ignored": 1},
        {"x0": 1.5, "label": "neutral", "hits": 1},
        {"x0": 5},
    ]
    assert run(metered, "r", {"stats": stats}) == {"sampled": True}
    s = dict(endpoint="r")
    buckets = {le: value(metered, "ferry_custom_x0_bucket", le=le, **s) for le in ("0.0", "1.0", "2.0", "+Inf")}
    assert buckets == {"0.0": 0, "1.0": 1, "2.0": 3, "+Inf": 4}
    assert value(metered, "ferry_custom_x0_sum", **s) == 8.5
    counts = {v: value(metered, "ferry_custom_label_total", value=v, **s) for v in ("positive", "negative", "other")}
    assert counts == {"positive": 1, "negative": 1, "other": 1}  # "neutral" is not listed
    assert value(metered, "ferry_custom_latency_ms", **s) == 7.5  # the last value
    assert value(metered, "ferry_custom_hits_total", **s) == 3


def test_wrong_types_are_dropped_with_one_warning_never_a_failed_request(metered, caplog):
    metered.add("r", code=metered.code(REPORTER))
    add_metrics(metered, "r", log_freq=1, scalars=["x0=0,1"], counters=["hits"])
    metered.apply()
    bad = [{"x0": "high"}, {"x0": None}, {"x0": float("nan")}, {"hits": -1}, "not a dict", {"x0": 0.5}]
    with caplog.at_level(logging.WARNING, logger="ferry"):
        for _ in range(3):
            assert run(metered, "r", {"stats": bad}) == {"sampled": True}
        assert value(metered, "ferry_custom_x0_count", endpoint="r") == 3  # only the good ones
        value(metered, "ferry_custom_x0_count", endpoint="r")  # a second refresh: no second warning
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert any("dropped 9 value(s) of custom statistic x0" in w for w in warnings)  # "high", None, nan, thrice
    assert any("custom statistic hits" in w and "only goes up" in w for w in warnings)
    assert len(warnings) == 3  # x0, hits, and the value that was not a dict: each once


def sampled_share(service, endpoint: str, n: int) -> int:
    async def go():
        return [await service.plane.infer(endpoint, None, {"stats": [{"x0": 1}]}) for _ in range(n)]

    return sum(answer["sampled"] for answer in asyncio.run(go()))


@pytest.mark.parametrize("freq", [0.0, 0.3, 1.0])
def test_sampling_frequency_within_statistical_bounds(metered, freq):
    metered.add("r", code=metered.code(REPORTER))
    add_metrics(metered, "r", log_freq=freq, scalars=["x0=0,1"])
    metered.apply()
    n = 2000
    sampled = sampled_share(metered, "r", n)
    sd = (n * freq * (1 - freq)) ** 0.5
    assert abs(sampled - n * freq) <= 5 * sd  # exact at 0 and 1
    assert value(metered, "ferry_custom_x0_count", endpoint="r") == sampled  # the unsampled record nothing


def test_unconfigured_endpoint_gets_none_and_service_default_frequency_applies(metered):
    metered.add("r", code=metered.code(REPORTER))
    metered.add("other", code=metered.code(REPORTER))
    add_metrics(metered, "r", scalars=["x0=0,1"])  # no --log-freq: the service default (1 until changed)
    metered.apply()
    assert sampled_share(metered, "other", 50) == 0
    assert sampled_share(metered, "r", 50) == 50
    metered.control.configure(metered.id, metric_log_freq=0.0)
    runtime = metered.plane.table.runtimes["r"]
    metered.apply()
    assert metered.plane.table.runtimes["r"] is runtime  # a metrics change reloads nothing
    assert sampled_share(metered, "r", 50) == 0


def test_wildcard_matches_every_version_and_the_unversioned_one(metered):
    code = metered.code(REPORTER)
    for version in ("", "1", "2"):
        metered.add("m", version=version, code=code)
    metered.add("n", code=code)
    add_metrics(metered, "m/*", log_freq=1, scalars=["x0=0,1"])
    add_metrics(metered, "m/2", log_freq=0)  # its own config wins over the wildcard
    metered.apply()
    for version in (None, "1", "2"):
        run(metered, "m", {"stats": [{"x0": 1}]}, version=version)
    run(metered, "n", {"stats": [{"x0": 1}]})
    assert value(metered, "ferry_custom_x0_count", endpoint="m", version="") == 1
    assert value(metered, "ferry_custom_x0_count", endpoint="m", version="1") == 1
    assert value(metered, "ferry_custom_x0_count", endpoint="m", version="2") == 0
    assert value(metered, "ferry_custom_x0_count", endpoint="n") == 0


def test_metrics_off_hooks_get_none(service):
    service.add("r", code=service.code(REPORTER))
    add_metrics(service, "r", log_freq=1, scalars=["x0=0,1"])
    service.apply()
    assert run(service, "r", {"stats": [{"x0": 1}]}) == {"sampled": False}


def test_one_kind_per_variable_name_across_endpoints(metered):
    add_metrics(metered, "a", scalars=["x=0,1"])
    with pytest.raises(Exception, match="ferry_custom_x"):
        add_metrics(metered, "b", enums=["x=p,q"])
    with pytest.raises(Exception, match="buckets"):
        add_metrics(metered, "b", scalars=["x=0,5"])
    add_metrics(metered, "b", scalars=["x=0,1"])  # the same definition is fine
