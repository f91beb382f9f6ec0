"""Canary choice: the pure pick (weights, prefix order, sticky keys, missing targets), then over a real data plane."""

from __future__ import annotations

import asyncio
import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.control.spec import CanarySpec
from ferry.errors import InvalidInput, NotFound, NotReady
from ferry.serving.request.canary import canary_choice, newest_under
from tests.budget import examples

WEIGHTS = st.lists(st.floats(min_value=0.001, max_value=1000), min_size=1, max_size=8)
KEYS = st.text(min_size=1, max_size=40)


def fixed(weights, targets) -> CanarySpec:
    return CanarySpec(endpoint="c", weights=tuple(weights), input_endpoints=tuple(targets))


def prefixed(weights, prefix: str = "m/") -> CanarySpec:
    return CanarySpec(endpoint="c", weights=tuple(weights), input_endpoint_prefix=prefix)


@given(WEIGHTS)
def test_shares_are_the_weights_normalised(weights):
    targets = [f"e/{i}" for i in range(len(weights))]
    choice = canary_choice(fixed(weights, targets), set(targets), {})
    total = sum(weights)
    assert choice.bounds[-1] == 1.0
    assert all(a < b for a, b in pairwise(choice.bounds))
    assert choice.shares() == pytest.approx({t: w / total for t, w in zip(targets, weights, strict=True)})


@given(WEIGHTS, st.lists(KEYS, min_size=1, max_size=20))
def test_a_routing_key_always_lands_on_the_same_target(weights, keys):
    targets = [f"e/{i}" for i in range(len(weights))]
    first = canary_choice(fixed(weights, targets), set(targets), {})
    rebuilt = canary_choice(fixed(weights, targets), {*targets, "other/1"}, {})  # a new revision, same canary
    for key in keys:
        assert {first.pick(key) for _ in range(5)} == {rebuilt.pick(key)}


def test_routing_keys_split_by_the_weights():
    choice = canary_choice(fixed((0.1, 0.9), ("a/1", "a/2")), {"a/1", "a/2"}, {})
    picks = [choice.pick(f"user-{i}") for i in range(20_000)]
    assert picks.count("a/1") / len(picks) == pytest.approx(0.1, abs=0.01)


@given(st.sets(st.integers(min_value=0, max_value=200), min_size=1, max_size=30), WEIGHTS)
def test_prefix_takes_the_newest_versions_in_numeric_order(versions, weights):
    served = {f"m/{v}" for v in versions} | {"m", "mm/999", "other/500"}
    newest = [f"m/{v}" for v in sorted(versions, reverse=True)][: len(weights)]
    choice = canary_choice(prefixed(weights), served, {})
    used = weights[: len(newest)]
    assert choice.targets == tuple(newest)
    assert choice.shares() == pytest.approx({t: w / sum(used) for t, w in zip(newest, used, strict=True)})


def test_ten_is_newer_than_nine_and_the_slash_is_optional():
    served = {"m/1", "m/2", "m/9", "m/10"}
    assert newest_under("m/", served) == ["m/10", "m/9", "m/2", "m/1"]
    assert canary_choice(prefixed((0.1, 0.9), "m"), served, {}).targets == ("m/10", "m/9")


@given(st.lists(st.tuples(st.floats(min_value=0.001, max_value=1000), st.booleans()), min_size=1, max_size=8))
def test_missing_targets_leave_the_rest_sharing_their_weight(targets):
    names = [f"e/{i}" for i in range(len(targets))]
    served = {n for n, (_, up) in zip(names, targets, strict=True) if up}
    choice = canary_choice(fixed([w for w, _ in targets], names), served, {})
    live = {n: w for n, (w, up) in zip(names, targets, strict=True) if up}
    if not live:
        with pytest.raises(NotReady, match=", ".join(names)):
            choice.pick()
        return
    assert choice.shares() == pytest.approx({n: w / sum(live.values()) for n, w in live.items()})
    assert all(choice.pick() in live for _ in range(20))


def test_a_bare_name_target_routes_as_serve_name_does():
    choice = canary_choice(fixed((1, 1), ("a", "b/2")), {"a/3", "b/2"}, {"a": "a/3", "b": "b/2"})
    assert choice.targets == ("a/3", "b/2")


def test_a_prefix_without_versions_is_503_naming_it():
    with pytest.raises(NotReady, match="no version of endpoint 'm' is served"):
        canary_choice(prefixed((1,)), {"m", "x/1"}, {}).pick()


@settings(max_examples=examples(50))
@given(st.randoms(use_true_random=False))
def test_random_picks_never_leave_the_targets(rng):
    random.seed(rng.random())
    choice = canary_choice(fixed((0.0, 2.0, 0.5), ("a/1", "a/2", "a/3")), {"a/1", "a/2", "a/3"}, {})
    assert {choice.pick() for _ in range(50)} <= {"a/2", "a/3"}


# --- over a real store and data plane --------------------------------------------------------------


def tagged(service, tag: str):
    return service.code(
        f"""
        class Preprocess:
            def process(self, data, state, collect=None):
                return "{tag}"
        """
    )


def infer(service, endpoint: str, routing_key: str | None = None, n: int = 1) -> list[str]:
    async def go():
        service.plane.loop = asyncio.get_running_loop()
        return [await service.plane.infer(endpoint, None, {}, routing_key) for _ in range(n)]

    return asyncio.run(go())


def test_a_canary_wins_over_an_endpoint_of_its_name_and_removing_it_restores_the_endpoint(service):
    service.add("m", code=tagged(service, "plain"))
    service.add("m", version="1", code=tagged(service, "one"))
    outcome = service.control.add_canary(service.id, endpoint="m", weights=(1,), input_endpoints=("/m/1/",))
    assert outcome.revision.summary == "canary m added: weights 1 over m/1"
    service.apply()
    assert set(infer(service, "m", n=20)) == {"one"}
    assert service.control.remove_endpoint(service.id, "m").revision.summary == "canary m removed"
    service.apply()
    assert infer(service, "m") == ["plain"]


def test_a_prefix_canary_follows_a_new_version(service):
    service.add("m", version="9", code=tagged(service, "9"))
    service.control.add_canary(service.id, endpoint="c", weights=(1, 0), input_endpoint_prefix="m")
    service.apply()
    assert set(infer(service, "c", n=10)) == {"9"}
    service.add("m", version="10", code=tagged(service, "10"))
    service.apply()
    assert set(infer(service, "c", n=10)) == {"10"}


def test_canary_mistakes_are_refused_with_what_to_do(service):
    with pytest.raises(InvalidInput, match="2 weights for 1 input endpoints"):
        service.control.add_canary(service.id, endpoint="c", weights=(1, 2), input_endpoints=("a/1",))
    with pytest.raises(InvalidInput, match="either --input-endpoints or --input-endpoint-prefix"):
        service.control.add_canary(service.id, endpoint="c", weights=(1,))
    with pytest.raises(InvalidInput, match="invalid canary target 'a/1/x'"):
        service.control.add_canary(service.id, endpoint="c", weights=(1,), input_endpoints=("a/1/x",))
    with pytest.raises(InvalidInput, match="non-negative"):
        service.control.add_canary(service.id, endpoint="c", weights=(0,), input_endpoint_prefix="a/")
    outcome = service.control.add_canary(service.id, endpoint="c", weights=(1,), input_endpoint_prefix="a/")
    assert outcome.warnings == ["canary c: endpoint a has no versions yet; it answers 503 until one is added"]


def test_unknown_endpoint_lists_the_canaries_too(service):
    service.add("m", version="1", code=tagged(service, "one"))
    service.control.add_canary(service.id, endpoint="c", weights=(1,), input_endpoints=("m/1",))
    service.apply()
    with pytest.raises(NotFound, match="served endpoints: c, m/1"):
        infer(service, "nope")
