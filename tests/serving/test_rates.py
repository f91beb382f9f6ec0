"""Per-endpoint request and error rates carried by the heartbeat (serving/revisions/rates.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ferry.serving.revisions.rates import Rates, percentile


@given(
    counts=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 50)), min_size=2, max_size=20),
    gap=st.floats(0.1, 10),
)
def test_rates_are_the_count_deltas_over_the_interval_and_restart_with_a_new_version(counts, gap):
    rates, requests, errors, t = Rates(), 0, 0, 100.0
    previous = None
    for added, failed in counts:
        replaced = added == 0 and failed == 0 and requests > 0  # now and then a new version starts from zero
        requests, errors = (0, 0) if replaced else (requests + added, errors + min(failed, added))
        (state,) = rates.add({"e": {"state": "ready", "requests": requests, "errors": errors}}, now=t).values()
        if previous is None or replaced:
            assert "requests_per_s" not in state
        else:
            assert state["requests_per_s"] == round((requests - previous[0]) / gap, 2)
            assert state["errors_per_s"] == round((errors - previous[1]) / gap, 2)
        previous, t = (requests, errors), t + gap


def test_endpoints_without_counts_are_left_alone():
    states = {"loading": {"state": "loading"}, "failed": {"state": "failed", "error": "boom"}}
    assert Rates().add(states, now=1.0) == {
        "loading": {"state": "loading"},
        "failed": {"state": "failed", "error": "boom"},
    }


BOUNDS = [0.001, 0.01, 0.1, float("inf")]


def test_the_series_samples_rates_and_latency_every_sample_s_and_restarts_with_a_new_version():
    rates = Rates(sample_s=10.0)
    buckets = [0, 0, 0, 0]
    for step in range(16):  # a heartbeat every 2 s: 20 requests and 2 errors a step, 15 in 1-10 ms, 5 in 10-100 ms
        t = 2.0 * step
        buckets = [buckets[0], buckets[1] + 15, buckets[2] + 5, buckets[3]]
        state = {"state": "ready", "requests": 20 * (step + 1), "errors": 2 * (step + 1)}
        rates.add({"e": state}, {"e": buckets}, BOUNDS, now=t, wall=1000.0 + t)
    assert state["series"] == [
        [1010, 10.0, 1.0, 10.0, 100.0],
        [1020, 10.0, 1.0, 10.0, 100.0],
        [1030, 10.0, 1.0, 10.0, 100.0],
    ]
    fresh = {"state": "ready", "requests": 3, "errors": 0}  # a new version: its counts start again
    rates.add({"e": fresh}, {"e": [3, 0, 0, 0]}, BOUNDS, now=40.0, wall=1040.0)
    assert "series" not in fresh
    rates.add({}, None, None, now=42.0)
    assert rates._series == {}  # an endpoint that left is forgotten


def test_percentiles_are_the_upper_bound_of_their_bucket():
    assert percentile([0, 0, 0, 0], BOUNDS, 0.5) is None
    assert percentile([50, 49, 1, 0], BOUNDS, 0.5) == 1.0
    assert percentile([50, 49, 1, 0], BOUNDS, 0.99) == 10.0
    assert percentile([50, 48, 1, 1], BOUNDS, 0.99) == 100.0
    assert percentile([0, 0, 0, 4], BOUNDS, 0.5) == 100.0  # +Inf: the last finite bound, as a floor


def test_the_console_sums_the_instances_series_from_the_newest_back():
    from ferry.console.charts import chart, merged

    one = [[100, 1.0, 0.0, 2.0, 5.0], [110, 2.0, 0.5, 2.0, 8.0]]
    two = [[111, 3.0, 0.0, 4.0, 9.0]]
    assert merged([one, two]) == [[100, 1.0, 0.0, 2.0, 5.0], [111, 5.0, 0.5, 3.0, 9.0]]
    drawn = chart([one, two])
    assert drawn is not None and (drawn["now"], drawn["peak"], drawn["p99_now"]) == (5.0, 5.0, 9.0)
    assert drawn["requests"] == "0.0,37.2 240.0,2.0"  # scaled to the peak: 1 of 5 low, 5 of 5 at the top
    assert chart([one[:1]]) is None  # one sample: no line yet
