"""The sklearn job through /serve, /v2 REST and /v2 gRPC with one Python client, alternating, in one run.

    python bench/v2_load.py PORT GRPC_PORT [SECONDS] [ROUNDS]

against a `ferry serve --grpc-port` of the sklearn scenario (bench/v2.sh starts one). HTTP goes over raw
asyncio keep-alive connections (tests/load.py), gRPC through tritonclient's asyncio client on one channel;
16 requests in flight each. The client is Python on the same 2 cores: compare the ratios, not the rates.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.load import hammer  # noqa: E402

CONCURRENCY = 16
V2_BODY = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}


async def grpc_rate(port: int, seconds: float) -> float:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = grpcclient.InferInput("input__0", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.array([[1.0, 2.0]], np.float32))
    done, deadline = 0, time.monotonic() + seconds

    async def caller() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await client.infer("sklearn", [tensor])
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    elapsed = time.monotonic() - started
    await client.close()
    return done / elapsed


async def http_rate(port: int, path: str, body: dict, seconds: float) -> float:
    tally = await hammer(port, path, orjson.dumps(body), connections=CONCURRENCY, seconds=seconds)
    bad = {s: n for s, n in tally.statuses().items() if s != 200}
    if bad:
        raise SystemExit(f"{path}: answers other than 200: {bad}")
    return tally.rate


async def main(port: int, grpc_port: int, seconds: float, rounds: int) -> None:
    faces = {
        "/serve": lambda: http_rate(port, "/serve/sklearn", {"x0": 1.0, "x1": 2.0}, seconds),
        "/v2 REST": lambda: http_rate(port, "/v2/models/sklearn/infer", V2_BODY, seconds),
        "/v2 gRPC": lambda: grpc_rate(grpc_port, seconds),
    }
    for face in faces.values():  # warm-up
        await asyncio.wait_for(face(), 60)
    rates: dict[str, list[float]] = {name: [] for name in faces}
    for r in range(1, rounds + 1):
        for name, face in faces.items():
            rates[name].append(await face())
            print(f"{r:<5} {name:<9} {rates[name][-1]:9.0f} req/s", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    base = medians["/serve"]
    print("median req/s: " + "  ".join(f"{n} {m:.0f} ({m / base:.3f} of /serve)" for n, m in medians.items()))


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(int(args[0]), int(args[1]), float(args[2]) if len(args) > 2 else 10, int(args[3]) if len(args) > 3 else 3)
    )
