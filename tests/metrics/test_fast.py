"""The fast recorders give exactly what prometheus_client would have counted itself (property tests)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from ferry.metrics.fast import Accumulators
from tests.budget import examples

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name.startswith(name)
    }


@settings(max_examples=examples(200), deadline=None)
@given(
    bounds=st.lists(finite, min_size=1, max_size=12, unique=True).map(sorted),
    rounds=st.lists(st.lists(finite, max_size=30), min_size=1, max_size=4),
)
def test_histogram_matches_prometheus_observe(bounds, rounds):
    """Observed in rounds with a flush between, the series equal those of observe() called directly."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = Accumulators()
    recorder = fast.histogram(Histogram("h", "h", ["e"], buckets=bounds, registry=ours).labels("x"))
    direct = Histogram("h", "h", ["e"], buckets=bounds, registry=theirs).labels("x")
    for values in rounds:
        for v in values:
            recorder.observe(v)
            direct.observe(v)
        fast.flush()
    mine, expected = samples(ours, "h_"), samples(theirs, "h_")
    assert mine.keys() == expected.keys()
    for key, want in expected.items():
        assert abs(mine[key] - want) <= 1e-6 * max(1.0, abs(want)), key  # sums may add in another order


@given(increments=st.lists(st.floats(min_value=0, max_value=1e6), max_size=40), flush_every=st.integers(1, 7))
def test_counter_flushes_every_increment_once(increments, flush_every):
    registry, fast = CollectorRegistry(), Accumulators()
    child = Counter("c", "c", ["e"], registry=registry).labels("x")
    recorder = fast.counter(child)
    for i, amount in enumerate(increments, 1):
        recorder.inc(amount)
        if i % flush_every == 0:
            fast.flush()
    fast.flush()
    fast.flush()  # nothing pending: nothing added twice
    assert abs(registry.get_sample_value("c_total", {"e": "x"}) - sum(increments)) <= 1e-6 * max(1.0, sum(increments))


def test_one_recorder_per_child():
    registry, fast = CollectorRegistry(), Accumulators()
    child = Counter("c", "c", ["e"], registry=registry).labels("x")
    assert fast.counter(child) is fast.counter(child)
