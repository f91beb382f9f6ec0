"""Per-endpoint request and error rates carried by the heartbeat (serving/revisions/rates.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ferry.serving.revisions.rates import Rates


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
