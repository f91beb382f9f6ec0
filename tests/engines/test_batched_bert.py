"""A real padded model batched: a tiny BERT in ONNX Runtime answers each request as it does alone (1e-5)."""

from __future__ import annotations

import asyncio

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.control.spec import EndpointSpec, TensorSpec
from ferry.engines import load_engine
from ferry.serving.batching.batcher import BatchPolicy, DynamicBatcher
from ferry.serving.batching.padding import batch_axes
from tests.budget import examples

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def bert_spec() -> EndpointSpec:
    return EndpointSpec(
        name="bert",
        version="1",
        engine="onnxruntime",
        model_id="m",
        inputs=tuple(TensorSpec(name=n, dtype="int64", shape=(-1, -1)) for n in INPUTS),
        outputs=(TensorSpec(name="logits", dtype="float32", shape=(-1, 2)),),
    )


def sentence(tokens: list[int]) -> dict[str, list[list[int]]]:
    """What the Hugging Face example's preprocess returns: one unpadded sequence, mask and types."""
    ids = tokens
    return {"input_ids": [ids], "attention_mask": [[1] * len(ids)], "token_type_ids": [[0] * len(ids)]}


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sentences=st.lists(st.lists(st.integers(2, 99), min_size=1, max_size=12), min_size=2, max_size=16),
    max_batch=st.integers(2, 16),
)
def test_padded_batches_answer_as_each_request_alone(bert_onnx, sentences, max_batch):
    """1-12 tokens, batched: each request's two logits within 1e-5 of its solo run.

    Requests of 1 and 2 tokens pad to 2, the logits' own width: the logits must not be cut to 1.
    """
    spec = bert_spec()
    engine = load_engine(spec, bert_onnx, None, None)
    policy = BatchPolicy(max_batch_size=max_batch, max_queue_delay_s=0.01)
    batcher = DynamicBatcher(engine, policy, batch_axes(spec, engine.input_names), spec.key, inline_budget_s=0)
    feeds = [engine.prepare(sentence(tokens)) for tokens in sentences]

    async def together():
        return await asyncio.gather(*(batcher.submit(f) for f in feeds))

    try:
        answers = asyncio.run(together())
    finally:
        batcher.close()
    assert batcher.batches < len(feeds)  # they did share model calls
    for f, (logits,) in zip(feeds, answers, strict=True):
        (alone,) = engine.run_tensors(f)
        assert logits.shape == alone.shape == (1, 2)
        np.testing.assert_allclose(logits, alone, rtol=0, atol=1e-5)
