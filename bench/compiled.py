"""A 100-tree RandomForest through its own ``predict`` and compiled to ONNX (aux compile=onnx), in one process.

Usage: .venv/bin/python bench/compiled.py [CALLS]   (default 300 calls per case; prints µs per call and ratios)
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from ferry.control.spec import EndpointSpec
from ferry.engines import load_engine
from ferry.engines.compiled import CompiledEngine

FEATURES = 10
BATCHES = (1, 32)


def per_call_us(engine, rows: np.ndarray, calls: int) -> float:
    """The median of ``calls`` timed ``engine.run`` calls on ``rows``, in µs."""
    for _ in range(20):
        engine.run(rows, {}, None)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        engine.run(rows, {}, None)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def main(calls: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, FEATURES))
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    model = RandomForestClassifier(100, random_state=0, n_jobs=1).fit(x, y)

    def engine(**aux):
        return load_engine(
            EndpointSpec(name="rf", version="1", engine="sklearn", model_id="m", aux_config=aux), None, model, None
        )

    original, compiled = engine(), engine(compile="onnx")
    assert isinstance(compiled, CompiledEngine), "the forest was not compiled: see the warning above"
    print(f"RandomForestClassifier(100 trees, {FEATURES} features), median of {calls} calls, one run")
    print(f"{'rows':>5} {'predict µs':>11} {'compiled µs':>12} {'speedup':>8}")
    for size in BATCHES:
        rows = rng.normal(size=(size, FEATURES))
        slow, fast = per_call_us(original, rows, calls), per_call_us(compiled, rows, calls)
        print(f"{size:>5} {slow:>11.1f} {fast:>12.1f} {slow / fast:>7.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
