"""Custom-statistics config: ClearML's variable grammar, wildcard matching, and the merge/remove operations."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.control.metrics_config import (
    MAX_BUCKETS,
    matching_metric_spec,
    metric_endpoint,
    parse_buckets,
    parse_variables,
)
from ferry.control.service import ServiceControl
from ferry.control.spec import EndpointSpec, MetricSpec, MetricVariable, ServiceConfig
from ferry.control.store import Store
from ferry.errors import InvalidInput, NotFound
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry

# --- the grammar --------------------------------------------------------------------------------


def test_a_bucket_list_is_sorted_and_unique():
    assert parse_buckets("10, 0,0.5,1,0.1,1") == (0.0, 0.1, 0.5, 1.0, 10.0)


def test_a_range_includes_max_without_float_noise():
    assert parse_buckets("0.0/1.0/0.1") == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert parse_buckets("0/1/0.3") == (0.0, 0.3, 0.6, 0.9)  # max off the grid: not added
    assert parse_buckets("-5/5/5") == (-5.0, 0.0, 5.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/1/0", "step must be over 0"),
        ("0/1/-0.1", "step must be over 0"),
        ("1/1/0.1", "MIN must be below MAX"),
        ("2/1/0.1", "MIN must be below MAX"),
        ("0/1e6/0.1", "at most 1000"),
        ("0/1", "is not MIN/MAX/STEP"),
        ("0,a,1", "'a' is not a number"),
        ("0,inf", "not a finite number"),
        ("0/nan/1", "not a finite number"),
        (" , ", "no buckets"),
    ],
)
def test_bad_buckets_are_refused_with_the_rule(text: str, message: str):
    with pytest.raises(InvalidInput, match=message):
        parse_buckets(text)


@given(
    low=st.integers(-10_000, 10_000),
    span=st.integers(1, 10_000),
    step=st.sampled_from([0.001, 0.01, 0.1, 0.25, 0.3, 0.5, 1, 2.5, 7, 100]),
)
def test_a_range_walks_from_min_to_max_by_step(low: int, span: int, step: float):
    high = low + span * step / 3  # often off the grid, sometimes on it
    count = math.floor((high - low) / step + 1e-9) + 1
    text = f"{low}/{high!r}/{step}"
    if count > MAX_BUCKETS:
        with pytest.raises(InvalidInput, match="at most"):
            parse_buckets(text)
        return
    buckets = parse_buckets(text)
    assert len(buckets) == count and buckets[0] == low
    assert all(b - a == pytest.approx(step, rel=1e-6) for a, b in pairwise(buckets))
    assert buckets[-1] <= high + 1e-9 * step and buckets[-1] + step > high - 1e-9 * step


def test_every_kind_parses_into_its_variable():
    variables = parse_variables(
        ["x0=0,0.1,0.5,1,10", "score=0.0/1.0/0.5"], ["label=positive, negative,positive"], ["latency_ms"], ["hits"]
    )
    assert variables == {
        "x0": MetricVariable(kind="scalar", buckets=(0.0, 0.1, 0.5, 1.0, 10.0)),
        "score": MetricVariable(kind="scalar", buckets=(0.0, 0.5, 1.0)),
        "label": MetricVariable(kind="enum", values=("positive", "negative")),
        "latency_ms": MetricVariable(kind="value"),
        "hits": MetricVariable(kind="counter"),
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": ["1abc"]}, "invalid variable name '1abc'"),
        ({"counters": ["a-b"]}, "invalid variable name 'a-b'"),
        ({"scalars": ["x.y=1,2"]}, "invalid variable name 'x.y'"),
        ({"scalars": ["x0"]}, "write NAME=VALUES"),
        ({"enums": ["label="]}, "no values"),
        ({"values": ["x"], "counters": ["x"]}, "'x' is given twice"),
    ],
)
def test_bad_variables_are_refused_with_the_rule(kwargs: dict, message: str):
    with pytest.raises(InvalidInput, match=message):
        parse_variables(**kwargs)


def test_metric_endpoints_are_a_name_a_version_or_a_wildcard():
    assert [metric_endpoint(e) for e in ("/a/", "a/2", "a/*")] == ["a", "a/2", "a/*"]
    for bad in ("a/b/c", "a b", "*"):
        with pytest.raises(InvalidInput):
            metric_endpoint(bad)


# --- wildcard matching --------------------------------------------------------------------------


def test_the_exact_endpoint_wins_then_the_wildcard_matches_every_version_and_none():
    exact, wild = MetricSpec(endpoint="s/2", log_freq=0.5), MetricSpec(endpoint="s/*", log_freq=0.1)
    config = ServiceConfig(metrics={"s/2": exact, "s/*": wild, "plain": MetricSpec(endpoint="plain")})
    assert matching_metric_spec(config, "s/2") is exact
    assert matching_metric_spec(config, "s/1") is wild
    assert matching_metric_spec(config, "s") is wild
    assert matching_metric_spec(config, "plain") is config.metrics["plain"]
    assert matching_metric_spec(config, "plain/1") is None  # only a wildcard reaches versions
    assert matching_metric_spec(config, "sx/1") is None


# --- the operations on a real store -------------------------------------------------------------


@pytest.fixture
def control(store_url: str, tmp_path: Path) -> tuple[ServiceControl, str]:
    store = Store.open(store_url)
    artifacts = ArtifactStore(str(tmp_path / "artifacts"), tmp_path / "cache", progress=False)
    service = store.create_service("metrics")
    return ServiceControl(store, ModelRegistry(store.sql, artifacts), artifacts), service.id


def spec(endpoint: str, log_freq: float | None = None, **kinds: str) -> MetricSpec:
    return MetricSpec(
        endpoint=endpoint, log_freq=log_freq, variables={n: MetricVariable(kind=k) for n, k in kinds.items()}
    )


def test_add_merges_variables_replacing_same_names_with_a_warning(control: tuple[ServiceControl, str]):
    ctl, sid = control
    first = ctl.set_metrics(sid, spec("s", 0.5, a="value", b="counter"))
    assert first.warnings == ["no endpoint 's' yet: its metrics apply once it is added"]
    second = ctl.set_metrics(sid, spec("s", b="value", c="counter"))
    assert "variable 'b' of s already existed: replaced it" in second.warnings
    merged = ctl.store.get_revision(sid).config.metrics["s"]
    assert merged.log_freq == 0.5  # kept: the second add gave none
    assert {n: v.kind for n, v in merged.variables.items()} == {"a": "value", "b": "value", "c": "counter"}
    assert second.revision.summary == "metrics s set: log_freq 0.5; a (value), b (value), c (counter)"


def test_no_warning_when_the_endpoint_or_a_version_of_it_exists(control: tuple[ServiceControl, str]):
    ctl, sid = control
    ctl.store.commit(
        sid,
        lambda c: (
            c.model_copy(update={"endpoints": {"s/1": EndpointSpec(name="s", version="1", engine="custom")}}),
            "e",
        ),
    )
    assert ctl.set_metrics(sid, spec("s/*", a="value")).warnings == []
    assert ctl.set_metrics(sid, spec("s/1", a="value")).warnings == []
    assert ctl.set_metrics(sid, spec("s/2", a="value")).warnings != []


def test_remove_a_variable_then_the_whole_config(control: tuple[ServiceControl, str]):
    ctl, sid = control
    ctl.set_metrics(sid, spec("s/*", a="value", b="counter"))
    out = ctl.remove_metrics(sid, "s/*", "a")
    assert out.revision.summary == "metric variable a of s/* removed"
    assert list(ctl.store.get_revision(sid).config.metrics["s/*"].variables) == ["b"]
    with pytest.raises(NotFound, match="logs no variable 'a'; it logs: b"):
        ctl.remove_metrics(sid, "s/*", "a")
    assert ctl.remove_metrics(sid, "s/*").revision.summary == "metrics of s/* removed"
    assert ctl.store.get_revision(sid).config.metrics == {}
    with pytest.raises(NotFound, match="no metrics configured for endpoint 's/\\*'; there are: \\(none\\)"):
        ctl.remove_metrics(sid, "s/*")
