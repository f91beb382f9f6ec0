"""Generated requests against a real `ferry serve`: the client's fault is a 4xx, never a 5xx."""

# Bodies (JSON of any shape, near-miss model inputs, raw bytes), content types and gzip (whole, cut off,
# corrupt) are generated; each example sends a burst of them at once over 8 connections, so the batched
# endpoints gather good and bad requests in one batch. FERRY_FUZZ_SEED=<n> replays a run; each run prints its seed.

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.budget import examples
from tests.fuzz.conftest import GOOD_REQUESTS
from tests.server import Server

pytestmark = pytest.mark.e2e

BURST = 16
EXAMPLES = examples(160)
"""Bursts: 2,560 requests in a bounded run, 12,800 in a deep one (tests/budget.py)."""
MIN_REQUESTS = EXAMPLES * BURST * 9 // 10
"""Hypothesis may stop a little short of ``max_examples``; far fewer would mean the fuzzer did not run."""
CONNECTIONS = 8

numbers = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4),
    max_leaves=12,
)
rows = st.lists(st.lists(numbers | scalars, max_size=4), max_size=4)
near_misses = st.one_of(
    st.fixed_dictionaries({"x0": numbers | json_values, "x1": numbers | json_values}),
    st.fixed_dictionaries({"values": st.lists(numbers | json_values, max_size=4)}),
    st.fixed_dictionaries({"x": rows | json_values}),
    rows,
    st.lists(numbers, max_size=5),
)


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    headers: dict[str, str]
    answer: object = None
    """For a good request: the answer it must get, whatever else is in its batch."""


def encoded(raw: bytes, how: str) -> tuple[bytes, dict[str, str]]:
    if how == "plain":
        return raw, {}
    packed = gzip.compress(raw)
    if how == "cut":
        packed = packed[: max(1, len(packed) // 2)]
    elif how == "corrupt":
        packed = packed[:10] + bytes(b ^ 0x5A for b in packed[10:])
    return packed, {"Content-Encoding": "gzip"}


@st.composite
def good_requests(draw: st.DrawFn) -> Request:
    endpoint, (body, answer) = draw(st.sampled_from(sorted(GOOD_REQUESTS.items())))
    data, headers = encoded(json.dumps(body).encode(), draw(st.sampled_from(["plain", "gzip"])))
    return Request(f"/serve/{endpoint}", data, {**headers, "Content-Type": "application/json"}, answer)


@st.composite
def fuzzed_requests(draw: st.DrawFn) -> Request:
    endpoint = draw(st.sampled_from([*GOOD_REQUESTS, "sk/", "nope", "sk/1", "a/b/c"]))
    body = draw(near_misses | json_values)
    raw = draw(st.sampled_from(["json", "bytes", "text"]))
    data = {"json": json.dumps(body).encode(), "bytes": draw(st.binary(max_size=32)), "text": str(body).encode()}[raw]
    data, headers = encoded(data, draw(st.sampled_from(["plain", "plain", "gzip", "cut", "corrupt"])))
    ctype = draw(st.sampled_from([None, "application/json", "text/plain", "application/octet-stream", "image/png"]))
    if ctype:
        headers["Content-Type"] = ctype
    return Request(f"/serve/{endpoint}", data, headers)


one_request = st.sampled_from([good_requests(), *[fuzzed_requests()] * 3]).flatmap(lambda chosen: chosen)
"""One good request in four: good and bad ones share the batches of the batched endpoints."""


class Sender:
    """Sends bursts of requests at once over a pool of keep-alive connections, and counts them by status."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(CONNECTIONS)

    def client(self) -> httpx.Client:
        if not hasattr(self._local, "client"):
            self._local.client = httpx.Client(base_url=self.url, timeout=30)
        return self._local.client

    def send(self, request: Request) -> tuple[Request, int, bytes]:
        answer = self.client().post(request.path, content=request.body, headers=request.headers)
        with self._lock:
            self.sent += 1
            self.statuses[answer.status_code] = self.statuses.get(answer.status_code, 0) + 1
        return request, answer.status_code, answer.content

    def burst(self, batch: list[Request]) -> list[tuple[Request, int, bytes]]:
        return list(self._pool.map(self.send, batch))

    def close(self) -> None:
        self._pool.shutdown()


def wrong(request: Request, status: int, content: bytes, home: str) -> str | None:
    """Why this answer breaks the contract, or None."""
    if request.answer is not None and (status != 200 or orjson.loads(content) != request.answer):
        return f"a good request answered {status} {content[:200]!r}"
    if status >= 500:
        return f"a {status}"
    if status >= 400:
        error = orjson.loads(content)
        if not (isinstance(error, dict) and error.get("error") and error.get("kind")):
            return "an error body without error and kind"
        if home in content.decode():
            return "a local path in the answer"
    return None


def test_generated_requests_never_get_a_5xx(fuzz_server: Server, e2e_home):
    """Thousands of requests (MIN_REQUESTS): no 5xx, every error a JSON {error, kind} without a local path, good
    ones answered."""
    run_seed = int(os.environ.get("FERRY_FUZZ_SEED") or random.randrange(2**32))
    print(f"FERRY_FUZZ_SEED={run_seed}")
    sender = Sender(fuzz_server.url)
    home = str(e2e_home.parent)

    @seed(run_seed)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(st.lists(one_request, min_size=BURST, max_size=BURST))
    def burst(batch: list[Request]) -> None:
        answers = sender.burst(batch)
        broken = [(why, req) for req, status, content in answers if (why := wrong(req, status, content, home))]
        assert not broken, f"{len(broken)} answers break the contract; the first: {broken[0]}"

    try:
        burst()
    finally:
        sender.close()
        print(f"sent {sender.sent} requests; answers by status: {dict(sorted(sender.statuses.items()))}")
    assert sender.sent >= MIN_REQUESTS
    assert fuzz_server.client.get("/health/ready").status_code == 200
    for endpoint, (body, answer) in GOOD_REQUESTS.items():
        reply = fuzz_server.serve(endpoint, body)
        assert (reply.status_code, reply.json()) == (200, answer), endpoint


def test_schemathesis_finds_the_openapi_document_valid_and_true(fuzz_server: Server, tmp_path):
    """Schemathesis loads /openapi.json without a schema error, and every answer is one the document declares."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "run", f"{fuzz_server.url}/openapi.json",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        # one worker: schemathesis' threads describe strategies with ast.parse at once, which CPython 3.11 can
        # fail ("AST constructor recursion depth mismatch", a CI run of the OpenAI routes' fuzz)
        "--max-examples", str(examples(15)), "--workers", "1", "--seed", "1", "--suppress-health-check", "all",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
