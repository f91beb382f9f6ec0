"""Ragged requests: the padding a batch computes is counted exactly, and grouping by length cuts it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.control.aux_config import validate_aux_config
from ferry.errors import InvalidInput
from ferry.metrics.collectors import Metrics
from ferry.serving.batching.padding import cut_by_length
from tests.budget import examples
from tests.serving.test_batching import ragged, ragged_model, run_many  # noqa: F401 - ragged is a fixture

LENGTHS = (1, 3, 2, 5, 4)


def scraped(service, name: str, endpoint: str) -> float:
    service.plane.refresh_metrics()
    found = service.plane.metrics.registry.get_sample_value(name, {"endpoint": endpoint, "version": ""})
    return 0.0 if found is None else found


@pytest.mark.parametrize(
    ("grouped", "elements", "padded"),
    [
        (False, 25, 10),  # one call of 5 x 5 for 15 values
        (True, 19, 4),  # lengths 1, 2 as one call (2 x 2) and 3, 4, 5 as another (3 x 5)
    ],
)
def test_padding_counted_exactly_with_and_without_grouping(service, ragged, grouped, elements, padded):  # noqa: F811
    service.plane.metrics = Metrics()
    ragged("r", max_batch_size=8, max_queue_delay_ms=200, instances=1, group_by_length=grouped)
    service.apply()
    bodies = [{"values": list(range(1, n + 1))} for n in LENGTHS]
    answers = run_many(service, "r", bodies)
    for body, answer in zip(bodies, answers, strict=True):
        assert answer == {"y": [2.0 * v for v in body["values"]], "total": float(sum(body["values"]))}
    assert scraped(service, "ferry_batch_size_count", "r") == 1  # one batch: all five waited together
    assert scraped(service, "ferry_batch_elements_total", "r") == elements
    assert scraped(service, "ferry_batch_padded_elements_total", "r") == padded


def test_a_version_without_batching_has_no_padding_series(service, ragged):  # noqa: F811
    service.plane.metrics = Metrics()
    ragged("solo", max_batch_size=1)
    service.apply()
    run_many(service, "solo", [{"values": [1.0, 2.0]}])
    text = service.plane.metrics.render()[0].decode()
    assert 'ferry_batch_elements_total{endpoint="solo"' not in text


def test_group_by_length_is_a_checked_aux_key():
    assert validate_aux_config("onnxruntime", {"group_by_length": "true"}) == {"group_by_length": True}
    with pytest.raises(InvalidInput, match="group_by_length"):
        validate_aux_config("onnxruntime", {"group_by_length": "sometimes"})
    with pytest.raises(InvalidInput, match="group_by_length"):
        validate_aux_config("custom", {"group_by_length": True})  # custom does not batch


def padded_cells(feeds_list, run) -> int:
    return sum(
        len(run) and sum(feeds_list[i][name].shape[0] for i in run) * int(np.prod(np.max(
            [feeds_list[i][name].shape[1:] for i in run], axis=0)))
        for name in feeds_list[0]
    )  # fmt: skip


@settings(max_examples=examples(200), deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 20), st.integers(1, 4)), min_size=1, max_size=32))
def test_cutting_by_length_partitions_the_batch_and_never_computes_more(shapes):
    feeds_list = [
        {"ids": np.zeros((rows, length), np.int64), "mask": np.zeros((rows, length, depth), np.int64)}
        for rows, length, depth in shapes
    ]
    runs = cut_by_length(feeds_list)
    assert sorted(i for run in runs for i in run) == list(range(len(shapes)))
    whole = padded_cells(feeds_list, list(range(len(shapes))))
    assert sum(padded_cells(feeds_list, run) for run in runs) <= whole
    if len({shape[1:] for shape in shapes}) == 1:
        assert runs == [list(range(len(shapes)))]  # nothing to save: one call, as without grouping


def test_requests_of_mixed_lengths_are_cut_into_short_and_long_runs():
    feeds_list = [{"x": np.zeros((1, n), np.float32)} for n in (20, 3, 21, 2, 19, 3)]
    assert cut_by_length(feeds_list) == [[3, 1, 5], [4, 0, 2]]
