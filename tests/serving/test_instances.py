"""Model instances as threads: how many by default, and the queue shared among the idle ones."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.control.spec import EndpointSpec
from ferry.engines.onnxruntime import OnnxRuntimeEngine
from ferry.engines.sklearn import SklearnEngine
from ferry.engines.torchscript import TorchScriptEngine
from ferry.serving.batching.batcher import BatchPolicy, DynamicBatcher
from ferry.serving.batching.instances import default_instances
from ferry.serving.batching.padding import Axes
from ferry.serving.request.inline import BLOCKED_FACTOR, SAMPLES, STRIKES, CostMeter
from ferry.settings import WORKERS_ENV, usable_cores
from tests.budget import examples


class Rows:
    """A batchable model that doubles its input; ``hold`` makes each call wait for the others of its round."""

    is_async = False
    input_names = ("x",)

    def __init__(self, hold: threading.Barrier | threading.Event | None = None) -> None:
        self.hold = hold
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def prepare(self, data):
        return {"x": np.asarray(data, dtype=np.float32)}

    def run_tensors(self, feeds):
        with self._lock:
            self.sizes.append(len(feeds["x"]))
        if self.hold is not None:
            self.hold.wait()  # raises BrokenBarrierError unless the other instances run at the same time
        return [feeds["x"] * 2]

    def unwrap(self, outputs):
        return outputs


def submit_all(batcher: DynamicBatcher, values: list[float]) -> list:
    async def go():
        return await asyncio.gather(*(batcher.submit({"x": np.array([[v]], np.float32)}) for v in values))

    try:
        return asyncio.run(go())
    finally:
        batcher.close()


@pytest.mark.parametrize("workers", ["1", "2", "64"])
def test_engines_that_release_the_gil_get_one_instance_per_core_of_their_worker(monkeypatch, workers):
    monkeypatch.setenv(WORKERS_ENV, workers)
    spare = 1 if workers == "1" else 0  # a lone worker runs a spare while its loop answers a finished batch
    expected = max(1, usable_cores() // int(workers)) + spare
    assert default_instances(OnnxRuntimeEngine) == default_instances(TorchScriptEngine) == expected
    assert default_instances(SklearnEngine) == 1  # its predict holds the GIL: a second thread gains nothing


def test_an_instances_key_overrides_the_default():
    spec = EndpointSpec(name="m", engine="custom", aux_config={"max_batch_size": 8, "instances": 3})
    assert BatchPolicy.from_spec(spec, default_instances=2).instances == 3
    plain = spec.model_copy(update={"aux_config": {"max_batch_size": 8}})
    assert BatchPolicy.from_spec(plain, default_instances=2).instances == 2


def test_idle_instances_split_the_queue_and_run_at_once():
    """32 requests, 2 instances, batches of up to 32: two batches of 16 run side by side, not one of 32."""
    model = Rows(hold=threading.Barrier(2, timeout=10))
    policy = BatchPolicy(max_batch_size=32, max_queue_delay_s=0.05, instances=2)
    batcher = DynamicBatcher(model, policy, Axes(), "m/1", inline_budget_s=0)
    answers = submit_all(batcher, [float(v) for v in range(32)])
    assert sorted(model.sizes) == [16, 16]
    assert [float(a[0][0, 0]) for a in answers] == [2.0 * v for v in range(32)]


def test_one_instance_takes_the_whole_queue():
    model = Rows()
    batcher = DynamicBatcher(model, BatchPolicy(max_batch_size=32, max_queue_delay_s=0.05), Axes(), "m/1", 0)
    submit_all(batcher, [1.0] * 32)
    assert model.sizes == [32]


@settings(max_examples=examples(30), deadline=None)
@given(queued=st.integers(1, 64), instances=st.integers(1, 4), max_batch=st.integers(1, 32))
def test_the_first_batches_share_the_queue_evenly(queued, instances, max_batch):
    """With every instance idle, the batches taken at once differ by at most one row and none exceeds the limit.

    Every model call waits for a gate opened 50 ms in: the first round is taken while no instance is free again.
    """
    gate = threading.Event()
    model = Rows(hold=gate)
    policy = BatchPolicy(max_batch_size=max_batch, max_queue_delay_s=0.01, instances=instances)
    batcher = DynamicBatcher(model, policy, Axes(), "m/1", inline_budget_s=0)
    opener = threading.Timer(0.05, gate.set)
    opener.start()
    answers = submit_all(batcher, [float(v) for v in range(queued)])
    assert [float(a[0][0, 0]) for a in answers] == [2.0 * v for v in range(queued)]
    assert max(model.sizes) <= max_batch and sum(model.sizes) == queued
    first = model.sizes[: min(instances, len(model.sizes))]
    if queued <= max_batch * instances:  # all of the queue fits in the first round
        assert max(first) - min(first) <= 1, model.sizes


def test_a_rare_stall_keeps_cheap_code_inline_but_blocking_code_leaves_the_loop():
    budget = 0.001
    stall = BLOCKED_FACTOR * budget * 2
    meter = CostMeter(budget)
    for _ in range(SAMPLES):
        meter.call(lambda: None)
    assert meter.cheap
    meter.call(time.sleep, stall)  # one stall (a GIL switch interval or two while model threads run)
    for _ in range(SAMPLES + 2):
        meter.call(lambda: None)
    assert meter.cheap and not meter.blocked  # measured again in the pool, and back on the loop
    on_loop = 0
    for _ in range(12):  # code that blocks on every call
        on_loop += meter.cheap
        meter.call(time.sleep, stall)
    assert on_loop <= STRIKES and not meter.cheap
