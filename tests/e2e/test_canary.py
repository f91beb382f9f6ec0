"""Canaries over a real `ferry serve`: measured splits, a prefix that follows new versions, sticky keys, 503s."""

from __future__ import annotations

import asyncio
import math
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Ferry
from tests.e2e import one_server
from tests.load import hammer
from tests.server import Server

pytestmark = pytest.mark.e2e
ferry_sqlite, server = one_server.ferry_sqlite, one_server.server  # one store and one `ferry serve` here

Z = 3.9
"""A two-sided normal bound that a correct split leaves less than 1e-4 of the time."""


def add_tagged(ferry: Ferry, tmp_path: Path, endpoint: str) -> None:
    """A custom endpoint NAME[/VERSION] answering {"tag": "NAME[/VERSION]"}."""
    name, _, version = endpoint.partition("/")
    path = tmp_path / f"tag_{endpoint.replace('/', '_')}.py"
    path.write_text(textwrap.dedent(f"""
        class Preprocess:
            def process(self, data, state, collect=None):
                return {{"tag": "{endpoint}"}}
        """))  # fmt: skip
    versioned = ["--version", version] if version else []
    ferry("model", "add", "--engine", "custom", "--endpoint", name, *versioned, "--preprocess", str(path))


def split(server: Server, endpoint: str, n: int = 2000) -> Counter:
    """Send ``n`` requests to /serve/ENDPOINT over 8 connections; how many answers carried each tag."""
    tally = asyncio.run(hammer(server.port, f"/serve/{endpoint}", b"{}", connections=8, count=n))
    assert tally.statuses() == {200: n}, tally.statuses()
    return Counter(answer.json()["tag"] for answer in tally.answers)


def assert_share(counts: Counter, tag: str, p: float) -> None:
    n = sum(counts.values())
    bound = Z * math.sqrt(p * (1 - p) / n)
    print(f"{tag}: {counts[tag] / n:.3f} of {n} (expected {p} +- {bound:.3f})")
    assert abs(counts[tag] / n - p) <= bound, counts


def wait_tag(server: Server, endpoint: str, tag: str) -> None:
    server.wait_for(lambda: server.serve(endpoint, {}).json().get("tag") == tag, what=f"/serve/{endpoint} -> {tag}")


def test_fixed_split_sticky_keys_and_a_canary_over_an_endpoint_name(ferry_sqlite: Ferry, server: Server, tmp_path):
    """Canary `a` (0.1 a/1, 0.9 a/2) wins over endpoint `a`; keys stick; `model remove` gives `a` back."""
    for endpoint in ("a", "a/1", "a/2"):
        add_tagged(ferry_sqlite, tmp_path, endpoint)
    out = ferry_sqlite(
        "model", "canary", "--endpoint", "a", "--weights", "0.1", "0.9", "--input-endpoints", "a/1", "a/2"
    )
    assert "canary a added: weights 0.1 0.9 over a/1, a/2" in out.out
    # a 404 without a tag until the revision loads: not taken yet
    server.wait_for(lambda: server.serve("a", {}).json().get("tag", "a") != "a", what="the canary taking /serve/a")
    counts = split(server, "a")
    assert set(counts) == {"a/1", "a/2"}  # never the endpoint `a` the canary shadows
    assert_share(counts, "a/1", 0.1)

    landed = {
        key: {server.post("/serve/a", {}, headers={"X-Ferry-Routing-Key": key}).json()["tag"] for _ in range(4)}
        for key in (f"user-{i}" for i in range(30))
    }
    assert all(len(tags) == 1 for tags in landed.values()), landed
    assert {tag for tags in landed.values() for tag in tags} == {"a/1", "a/2"}

    listed = ferry_sqlite("model", "endpoints", "--json").json()["canaries"]["a"]
    assert listed["weights"] == [0.1, 0.9] and listed["input_endpoints"] == ["a/1", "a/2"]
    assert "canary a removed" in ferry_sqlite("model", "remove", "--endpoint", "a").out
    wait_tag(server, "a", "a")
    assert "a" not in ferry_sqlite("model", "endpoints", "--json").json()["canaries"]


def test_prefix_split_follows_new_versions(ferry_sqlite: Ferry, server: Server, tmp_path):
    """ClearML's line: `--endpoint m --weights 0.1 0.9 --input-endpoints-prefix m`: newest first, 10 after 9."""
    add_tagged(ferry_sqlite, tmp_path, "m/9")
    ferry_sqlite("model", "canary", "--endpoint", "m", "--weights", "0.1", "0.9", "--input-endpoints-prefix", "m")
    server.wait_endpoint("m", {})
    assert split(server, "m", 200) == {"m/9": 200}  # more weights than versions: the first, renormalised

    add_tagged(ferry_sqlite, tmp_path, "m/10")
    wait_tag(server, "m", "m/10")
    counts = split(server, "m")
    assert set(counts) == {"m/9", "m/10"}
    assert_share(counts, "m/10", 0.1)

    add_tagged(ferry_sqlite, tmp_path, "m/11")
    wait_tag(server, "m", "m/11")
    counts = split(server, "m")
    assert set(counts) == {"m/10", "m/11"}
    assert_share(counts, "m/11", 0.1)


def test_a_canary_whose_targets_are_all_missing_is_503_naming_them(ferry_sqlite: Ferry, server: Server, tmp_path):
    add_tagged(ferry_sqlite, tmp_path, "x/1")
    out = ferry_sqlite("model", "canary", "--endpoint", "c", "--weights", "1", "3", "--input-endpoints", "x/1", "y/1")
    assert "y/1 not served yet" in out.err
    server.wait_endpoint("c", {})
    assert split(server, "c", 100) == {"x/1": 100}  # y/1 missing: x/1 takes its weight
    ferry_sqlite("model", "remove", "--endpoint", "x/1")
    server.wait_for(lambda: server.serve("c", {}).status_code == 503, what="/serve/c -> 503")
    answer = server.serve("c", {})
    assert "x/1, y/1" in answer.json()["error"] and "retry-after" in answer.headers
