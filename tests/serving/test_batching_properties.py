"""Property tests: batched, every request gets exactly what it gets alone, whatever the mix and the timing."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.control.spec import EndpointSpec, TensorSpec
from ferry.serving.batching.batcher import BatchPolicy, DynamicBatcher
from ferry.serving.batching.padding import batch_axes
from ferry.serving.batching.patience import FACTOR, Patience
from tests.budget import examples


class NumpyModel:
    """A small real model in numpy: per-token output (cut back), a pooled sum, and a fixed-width head.

    Rows holding a negative value make the call fail, as a model refusing an input does.
    """

    is_async = False
    input_names = ("x",)

    def __init__(self, width: int) -> None:
        self.width = width
        self.calls = 0

    def prepare(self, data):
        return {"x": np.asarray(data, dtype=np.float32)}

    def run_tensors(self, feeds):
        self.calls += 1
        x = feeds["x"]
        if (x < 0).any():
            raise ValueError("negative values are not allowed")
        head = x[:, :1] * np.arange(1, self.width + 1, dtype=np.float32)
        return [x * 2 + 1, x.sum(axis=1), head]

    def unwrap(self, outputs):
        return outputs


def spec(width: int) -> EndpointSpec:
    return EndpointSpec(
        name="p",
        version="1",
        engine="custom",
        inputs=(TensorSpec(name="x", dtype="float32", shape=(-1, -1)),),
        outputs=(
            TensorSpec(name="y", shape=(-1, -1)),
            TensorSpec(name="s", shape=(-1,)),
            TensorSpec(name="head", shape=(-1, width)),
        ),
    )


request = st.tuples(
    st.integers(1, 3),  # rows
    st.integers(1, 6),  # tokens
    st.booleans(),  # poisoned: the model refuses this request
    st.floats(0, 0.004),  # arrival delay, seconds
)


def solo(model: NumpyModel, feeds) -> object:
    try:
        return model.run_tensors(feeds)
    except Exception as exc:
        return exc


def same(batched, alone) -> bool:
    if isinstance(alone, Exception):
        return isinstance(batched, type(alone)) and str(batched) == str(alone)
    return not isinstance(batched, Exception) and all(
        b.shape == a.shape and np.allclose(b, a, atol=1e-5) for b, a in zip(batched, alone, strict=True)
    )


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(request, min_size=1, max_size=24),
    max_batch=st.integers(3, 16),  # a request of more rows than this is refused (tested elsewhere)
    delay_ms=st.sampled_from([0, 1, 5]),
    instances=st.integers(1, 3),
    width=st.integers(1, 6),
    grouped=st.booleans(),  # group_by_length changes a batch's model calls, never its answers
    implicit=st.booleans(),  # on by default: a refused batch of poisoned rows must not end batching
    seed=st.integers(0, 2**16),
)
def test_batched_answers_equal_solo_answers(requests, max_batch, delay_ms, instances, width, grouped, implicit, seed):
    model = NumpyModel(width)
    policy = BatchPolicy(max_batch_size=max_batch, max_queue_delay_s=delay_ms / 1000, instances=instances,
                         group_by_length=grouped, implicit=implicit)  # fmt: skip
    batcher = DynamicBatcher(model, policy, batch_axes(spec(width), model.input_names), "p/1", inline_budget_s=0)
    rng = np.random.default_rng(seed)
    feeds = []
    for rows, tokens, poisoned, _ in requests:
        x = rng.integers(0, 9, size=(rows, tokens)).astype(np.float32)
        if poisoned:
            x[0, 0] = -1
        feeds.append({"x": x})

    async def one(f, wait):
        await asyncio.sleep(wait)
        try:
            return await batcher.submit(f)
        except Exception as exc:
            return exc

    async def all_at_once():
        return await asyncio.gather(*(one(f, r[3]) for f, r in zip(feeds, requests, strict=True)))

    try:
        answers = asyncio.run(all_at_once())
    finally:
        batcher.close()
    for f, answer in zip(feeds, answers, strict=True):
        assert same(answer, solo(model, f)), (f["x"].tolist(), answer)
    assert not batcher.solo  # every refused batch had a culprit that fails alone too


def test_a_fixed_width_output_is_never_cut_to_the_padded_length():
    """A 28-label head fed requests of 28 and 20 tokens: every answer keeps its 28 labels."""
    model = NumpyModel(28)
    batcher = DynamicBatcher(model, BatchPolicy(max_batch_size=8, max_queue_delay_s=0.02), batch_axes(spec(28), ("x",)),
                             "p/1", inline_budget_s=0)  # fmt: skip
    feeds = [{"x": np.ones((1, n), np.float32)} for n in (28, 20, 28, 20)]

    async def go():
        return await asyncio.gather(*(batcher.submit(f) for f in feeds))

    answers = asyncio.run(go())
    batcher.close()
    assert batcher.batches < len(feeds)
    assert [a[2].shape for a in answers] == [(1, 28)] * 4
    assert [a[0].shape for a in answers] == [(1, 28), (1, 20), (1, 28), (1, 20)]


def test_without_an_output_spec_nothing_is_cut():
    bare = EndpointSpec(name="p", version="1", engine="custom",
                        inputs=(TensorSpec(name="x", dtype="float32", shape=(-1, -1)),))  # fmt: skip
    model = NumpyModel(2)
    batcher = DynamicBatcher(model, BatchPolicy(max_batch_size=8, max_queue_delay_s=0.02), batch_axes(bare, ("x",)),
                             "p/1", inline_budget_s=0)  # fmt: skip

    async def go():
        return await asyncio.gather(*(batcher.submit({"x": np.ones((1, n), np.float32)}) for n in (3, 5)))

    short, _ = asyncio.run(go())
    batcher.close()
    assert short[0].shape == (1, 5)  # padded, and left padded: the spec does not say the axis follows the input


@pytest.fixture
def logreg():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    return LogisticRegression().fit(x, (x.sum(axis=1) > 0).astype(int))


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from([3, 3, 3, 2, 4]), st.integers(0, 2**16)), min_size=1, max_size=20))
def test_row_models_never_pad_a_short_row(logreg, rows):
    """sklearn rows of the wrong width fail alone (as they do unbatched); the others get their own answer.

    Labels are equal; probabilities equal to float64 rounding (BLAS picks its kernel by batch size).
    """
    from ferry.engines.tensor import RowBatching

    class Rows(RowBatching):
        is_async = False

        def predict_rows(self, array):
            return np.column_stack([logreg.predict(array), logreg.predict_proba(array)])

    engine = Rows()
    axes = batch_axes(spec(1), engine.input_names, rows_only=True)
    batcher = DynamicBatcher(engine, BatchPolicy(max_batch_size=32, max_queue_delay_s=0.005), axes, "sk/1", 0)
    bodies = [np.random.default_rng(seed).normal(size=width).tolist() for width, seed in rows]

    async def go():
        jobs = [batcher.submit(engine.prepare([b])) for b in bodies]
        return await asyncio.gather(*jobs, return_exceptions=True)

    answers = asyncio.run(go())
    batcher.close()
    for body, answer in zip(bodies, answers, strict=True):
        if len(body) != 3:
            assert isinstance(answer, ValueError), answer
        else:
            assert answer[0][0, 0] == logreg.predict([body])[0]
            assert np.allclose(answer[0][0, 1:], logreg.predict_proba([body])[0], rtol=0, atol=1e-12)


def test_a_closed_loop_of_clients_does_not_wait_out_the_queue_delay():
    """Eight clients, each sending its next request when its answer comes (a benchmark's closed loop), against a
    200 ms queue delay: once a round's eight have arrived no ninth can, and the batch goes at once instead of
    waiting out the delay (which would take 20 rounds x 200 ms = 4 s)."""
    model = NumpyModel(1)
    policy = BatchPolicy(max_batch_size=32, max_queue_delay_s=0.2)
    batcher = DynamicBatcher(model, policy, batch_axes(spec(1), model.input_names), "p/1", inline_budget_s=0)

    async def client(i):
        for _ in range(20):
            x = np.full((1, 2), float(i), np.float32)
            answer = await batcher.submit({"x": x})
            assert np.array_equal(answer[0], x * 2 + 1)

    async def clients():
        await asyncio.gather(*(client(i) for i in range(8)))

    started = time.monotonic()
    try:
        asyncio.run(clients())
    finally:
        batcher.close()
    assert time.monotonic() - started < 2.0
    assert batcher.batched_rows == 160 and batcher.batches <= 80  # still gathered: about one batch a round


@given(gaps=st.lists(st.floats(1e-6, 0.01), min_size=1, max_size=50), idle=st.floats(0, 0.1))
def test_patience_waits_the_delay_until_it_knows_the_gaps_then_a_few_gaps_at_most(gaps, idle):
    patience = Patience()
    assert patience.until(last_arrival=5.0, deadline=5.2) == 5.2  # nothing known: the delay as configured
    for gap in gaps:
        patience.observe(gap)
    assert min(gaps) <= patience.gap_s <= max(gaps)
    until = patience.until(last_arrival=5.0, deadline=5.0 + idle)
    assert until <= 5.0 + idle and until <= 5.0 + FACTOR * max(gaps)
    assert until == pytest.approx(min(5.0 + idle, 5.0 + FACTOR * patience.gap_s))
