"""An LLM endpoint is an endpoint: a new version swaps in live while a stream finishes on the one it began on,
and a canary splits OpenAI requests by weight between two versions."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Ferry
from tests.e2e.conftest import FAST_POLL
from tests.llm.tiny import build_tiny_llama
from tests.server import Server

pytestmark = [pytest.mark.e2e]
SLOW = {"hidden": 512, "layers": 8, "context": 4096}
GREEDY = {"prompt": "The quick brown", "max_tokens": 8, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def models(e2e_ferry: Ferry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Uploaded: tiny0 and tiny1 (different weights), and slow, a larger random Llama whose streams last seconds
    (10-40 ms a token on two cores); name -> model id."""
    ids = {}
    for name, seed, size in (("tiny0", 0, {}), ("tiny1", 1, {}), ("slow", 0, SLOW)):
        folder = build_tiny_llama(tmp_path_factory.mktemp(name) / name, seed=seed, **size)
        out = e2e_ferry("model", "upload", "--name", name, "--project", "llm", "--path", str(folder)).out
        ids[name] = out.strip().rsplit("=", 1)[1]
    return ids


@pytest.fixture(scope="module")
def server(e2e_home: Path, e2e_service: str) -> Iterator[Server]:
    srv = Server(e2e_home.parent, "--id", e2e_service, env=FAST_POLL)
    try:
        srv.wait_ready(timeout=60)
        yield srv
    finally:
        srv.stop()


def _add(ferry: Ferry, service: str, endpoint: str, model: str, *extra: str) -> None:
    ferry("--id", service, "model", "add", "--engine", "llm", "--endpoint", endpoint, "--name", model,
          "--project", "llm", *extra)  # fmt: skip


def _text(server: Server, model: str) -> str:
    answer = server.post("/serve/openai/v1/completions", {"model": model, **GREEDY})
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]["text"]


def _wait_text(server: Server, model: str, unlike: str | None = None) -> str:
    texts: list[str] = []

    def answered() -> bool:
        answer = server.post("/serve/openai/v1/completions", {"model": model, **GREEDY})
        if answer.status_code != 200:
            return False
        texts.append(answer.json()["choices"][0]["text"])
        return texts[-1] != unlike

    server.wait_for(answered, 60, f"{model} answering" + (f" other than {unlike!r}" if unlike else ""))
    return texts[-1]


def test_a_stream_in_progress_finishes_on_its_version_while_the_new_one_takes_new_requests(
    server: Server, e2e_ferry: Ferry, e2e_service: str, models: dict[str, str]
) -> None:
    _add(e2e_ferry, e2e_service, "swap", "slow")
    first = _wait_text(server, "swap")
    events, reader = _stream(server, "swap", 300)
    _add(e2e_ferry, e2e_service, "swap", "tiny1")  # the same endpoint, another model: a new revision
    second = _wait_text(server, "swap", unlike=first)
    swapped_at = time.monotonic()
    reader.join(120)
    assert second != first
    finish = [e["choices"][0]["finish_reason"] for _, e in events if e["choices"]]
    assert finish[-1] == "length" and not any(finish[:-1])
    assert events[-1][1]["usage"]["completion_tokens"] == 300  # all of them, from the version it began on
    assert events[-1][0] > swapped_at, "the stream ended before the new version answered: no overlap was tested"
    assert "still generate on the retired version, which stays in memory beside the new one" in server.log()


def test_a_stream_past_the_drain_limit_ends_with_finish_reason_abort(
    e2e_home: Path, e2e_ferry: Ferry, models: dict[str, str]
) -> None:
    service = e2e_ferry.service("short drain")
    _add(e2e_ferry, service, "long", "slow")
    srv = Server(e2e_home.parent, "--id", service, env={**FAST_POLL, "FERRY_DRAIN_TIMEOUT_S": "1"})
    try:
        srv.wait_ready(timeout=60)
        _wait_text(srv, "long")
        events, reader = _stream(srv, "long", 3000)
        _add(e2e_ferry, service, "long", "tiny0")
        reader.join(120)
        finish = [e["choices"][0]["finish_reason"] for _, e in events if e["choices"]]
        assert finish[-1] == "abort" and not any(finish[:-1]), finish[-3:]
        assert events[-1][1]["usage"]["completion_tokens"] < 3000
    finally:
        srv.stop()


def _stream(server: Server, model: str, tokens: int) -> tuple[list[tuple[float, dict]], threading.Thread]:
    """Start streaming ``tokens`` tokens from ``model`` in a thread; returns its (arrival time, event) list (filled
    as they come) and the thread, once the first event arrived."""
    body = {"model": model, "prompt": "Once upon", "max_tokens": tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    events: list[tuple[float, dict]] = []
    started = threading.Event()

    def read() -> None:
        with httpx.stream("POST", f"{server.url}/serve/openai/v1/completions", json=body, timeout=120) as answer:
            for line in answer.iter_lines():
                if line.startswith("data: {"):
                    events.append((time.monotonic(), json.loads(line[len("data: ") :])))
                    started.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(30)
    return events, reader


def test_a_canary_splits_chat_requests_by_weight_between_two_versions(
    server: Server, e2e_ferry: Ferry, e2e_service: str, models: dict[str, str]
) -> None:
    _add(e2e_ferry, e2e_service, "duo", "tiny0", "--version", "1")
    _add(e2e_ferry, e2e_service, "duo", "tiny1", "--version", "2")
    one, two = _wait_text(server, "duo/1"), _wait_text(server, "duo/2")
    assert one != two
    e2e_ferry("--id", e2e_service, "model", "canary", "--endpoint", "split", "--weights", "0.5", "0.5",
              "--input-endpoints", "duo/1", "duo/2")  # fmt: skip
    _wait_text(server, "split")
    texts = [_text(server, "split") for _ in range(24)]
    assert {one, two} == set(texts), texts
    assert "split" in {m["id"] for m in server.client.get("/serve/openai/v1/models").json()["data"]}


def test_a_shadow_of_an_llm_endpoint_gets_copies_and_reports_agreement(
    server: Server, e2e_ferry: Ferry, e2e_service: str, models: dict[str, str]
) -> None:
    _add(e2e_ferry, e2e_service, "twin0", "tiny0")
    _add(e2e_ferry, e2e_service, "twin1", "tiny0")  # the same weights: greedy answers agree
    _wait_text(server, "twin0"), _wait_text(server, "twin1")
    e2e_ferry("--id", e2e_service, "model", "shadow", "--endpoint", "twin0", "--target", "twin1")
    chat = {"model": "twin0", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "temperature": 0}

    def counts() -> dict:
        return json.loads(e2e_ferry("--id", e2e_service, "status", "--json").out)["instances"][0]["state"]["shadows"]

    server.wait_for(lambda: counts().get("twin0", {}).get("target") == "twin1", 20, "the shadow served")
    for stream in (False, False, True):
        with server.client.stream("POST", "/serve/openai/v1/chat/completions", json={**chat, "stream": stream}) as a:
            assert a.status_code == 200 and a.read()
    server.wait_for(lambda: counts()["twin0"]["answered"] == 3, 20, "three shadow answers")
    shadow = counts()["twin0"]
    assert (shadow["sent"], shadow["errors"], shadow["compared"], shadow["agreement"]) == (3, 0, 2, 1.0), shadow


def test_an_auto_update_rule_deploys_a_published_llm_and_export_apply_round_trips(
    server: Server, e2e_ferry: Ferry, e2e_service: str, models: dict[str, str], tmp_path: Path
) -> None:
    e2e_ferry("--id", e2e_service, "model", "auto-update", "--engine", "llm", "--endpoint", "auto", "--name", "tiny1",
              "--project", "llm", "--published", "--max-versions", "1", "--aux-config", "max_num_seqs=2")  # fmt: skip
    e2e_ferry("model", "publish", "--model-id", models["tiny1"])
    assert _wait_text(server, "auto/1") == _wait_text(server, "auto")
    exported = e2e_ferry("--id", e2e_service, "export").out
    assert "engine: llm" in exported and "max_num_seqs: 2" in exported
    (tmp_path / "service.yaml").write_text(exported)
    dry = e2e_ferry("--id", e2e_service, "apply", "-f", str(tmp_path / "service.yaml"), "--dry-run").out
    assert "no change" in dry.lower(), dry
    listed = e2e_ferry("--id", e2e_service, "model", "endpoints").out
    assert "auto/1" in listed and "llm" in listed
