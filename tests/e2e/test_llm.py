"""LLM endpoints for real: a tiny Llama uploaded as a folder, added with --engine llm (and vllm), served by one
`ferry serve`, asked through the official `openai` client and plain HTTP, streamed and not."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.browser import chromium_page
from tests.budget import examples
from tests.conftest import Ferry
from tests.e2e.conftest import FAST_POLL
from tests.llm.tiny import build_tiny_llama
from tests.server import Server

openai = pytest.importorskip("openai")
pytestmark = [pytest.mark.e2e]

CLEARML_STYLE_PREPROCESS = '''
from typing import Any, Callable, List, Optional, Union


class Preprocess:
    """Shaped as ClearML-Serving's vllm example: load() returns vLLM settings, preprocess edits body["request"]."""

    def __init__(self):
        self.model_endpoint = None

    def load(self, local_file_name: str) -> Optional[Any]:
        return {
            "vllm_model_config": {"lora_modules": None, "response_role": "assistant", "chat_template": None},
            "chat_settings": {"enable_auto_tools": False, "chat_template_content_format": "auto"},
        }

    def keep_last_system_prompt(self, messages: List) -> List:
        leading = [i for i, m in enumerate(messages) if m["role"] == "system"]
        if len(leading) > 1:
            messages = [m for i, m in enumerate(messages) if m["role"] != "system" or i == leading[-1]]
        return messages

    async def preprocess(self, body: Union[bytes, dict], state: dict, collect_custom_statistics_fn=None) -> Any:
        if "messages" in body["request"]:
            body["request"]["messages"] = self.keep_last_system_prompt(body["request"]["messages"])
            state["systems"] = sum(m["role"] == "system" for m in body["request"]["messages"])
        return body

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        data["system_prompts_seen"] = state.get("systems")
        return data
'''

ASKS_SYNC = """
class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        messages = [{"role": "user", "content": data["q"]}]
        result = self.send_request(endpoint="chat/completions", version=None,
                                   data={"model": "chat", "messages": messages, "max_tokens": 3, "temperature": 0})
        return {"by_attribute": result.choices[0].message.content, "by_key": result["choices"][0]["message"]["content"]}
"""
ASKS_ASYNC = """
class Preprocess:
    async def process(self, data, state, collect_custom_statistics_fn=None):
        result = await self.send_request(endpoint="v1/completions", version=None,
                                         data={"model": "chat", "prompt": data["q"], "max_tokens": 3, "temperature": 0})
        return {"text": result.choices[0].text, "tokens": result.usage.completion_tokens}
"""

EMBEDS = """
class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        text = data["text"]
        return {"embedding": [float(len(text)), 0.5, -1.0], "tokens": len(text.split())}
"""

SHOUTS = """
class Preprocess:
    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        data["whole"] = True  # non-streamed answers only
        return data

    def postprocess_chunk(self, chunk, state, collect_custom_statistics_fn=None):
        state["chunks"] = state.get("chunks", 0) + 1
        for choice in chunk["choices"]:
            if choice["delta"].get("content"):
                choice["delta"]["content"] = choice["delta"]["content"].upper()
        chunk["seen"] = state["chunks"]
        return chunk
"""


@pytest.fixture(scope="module")
def llm_server(e2e_home: Path, e2e_ferry: Ferry, e2e_service: str, tmp_path_factory) -> Iterator[Server]:
    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")
    code = tmp_path_factory.mktemp("code") / "preprocess.py"
    code.write_text(CLEARML_STYLE_PREPROCESS)
    e2e_ferry("model", "upload", "--name", "tiny", "--project", "llm", "--path", str(folder))
    e2e_ferry("--id", e2e_service, "model", "add", "--engine", "llm", "--endpoint", "chat", "--name", "tiny",
              "--project", "llm", "--aux-config", "max_num_seqs=4", "max_model_len=256")  # fmt: skip
    e2e_ferry("--id", e2e_service, "model", "add", "--engine", "vllm", "--endpoint", "test_vllm", "--name", "tiny",
              "--project", "llm", "--preprocess", str(code), "--aux-config", "max_model_len=256")  # fmt: skip
    shouts = tmp_path_factory.mktemp("shouts") / "preprocess.py"
    shouts.write_text(SHOUTS)
    e2e_ferry("--id", e2e_service, "model", "add", "--engine", "llm", "--endpoint", "shout", "--name", "tiny",
              "--project", "llm", "--preprocess", str(shouts))  # fmt: skip
    e2e_ferry("--id", e2e_service, "model", "add", "--engine", "llm", "--endpoint", "solo", "--name", "tiny",
              "--project", "llm", "--aux-config", "max_num_seqs=1", "max_waiting=1")  # fmt: skip
    for name, engine, text, aux in (
        ("asks", "custom", ASKS_SYNC, ()),
        ("asks_async", "custom_async", ASKS_ASYNC, ()),
        ("embed", "custom", EMBEDS, ("--aux-config", "openai=embeddings")),
    ):
        path = tmp_path_factory.mktemp(name) / "preprocess.py"
        path.write_text(text)
        add = ("model", "add", "--engine", engine, "--endpoint", name, "--preprocess", str(path), *aux)
        e2e_ferry("--id", e2e_service, *add)
    server = Server(e2e_home.parent, "--id", e2e_service, env=FAST_POLL)
    try:
        server.wait_ready(timeout=60)
        for name in ("chat", "test_vllm", "solo", "shout"):
            server.wait_for(lambda n=name: _chat(server, n).status_code == 200, 60, f"{name} answering")
        yield server
    finally:
        server.stop()


def _chat(server: Server, model: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, **extra}
    return server.post("/serve/openai/v1/chat/completions", body)


@pytest.fixture(scope="module")
def client(llm_server: Server):
    with openai.OpenAI(base_url=f"{llm_server.url}/serve/openai/v1", api_key="-", max_retries=0) as c:
        yield c


def test_the_openai_client_chats_streamed_and_not_with_the_same_greedy_text(client) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=12)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 5 and 1 <= whole.usage.completion_tokens <= 12
    assert whole.model == "chat" and whole.object == "chat.completion"

    chunks = list(
        client.chat.completions.create(
            model="chat", messages=messages, temperature=0, max_tokens=12, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == choice.finish_reason and not any(finishes[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content


def test_completions_with_two_prompts_n_two_and_logprobs(client) -> None:
    answer = client.completions.create(
        model="chat", prompt=["The quick brown", "Hello, world"], n=2, max_tokens=5, temperature=0.8, seed=3,
        logprobs=2,
    )  # fmt: skip
    assert len(answer.choices) == 4 and sorted(c.index for c in answer.choices) == [0, 1, 2, 3]
    for c in answer.choices:
        assert c.logprobs is not None and len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) >= 1
        assert all(lp <= 0 for lp in c.logprobs.token_logprobs)
        # the top two and, as OpenAI's API does, the sampled token when it is not among them
        assert all(1 <= len(top) <= 3 for top in c.logprobs.top_logprobs), c.logprobs
        assert all(token in top for token, top in zip(c.logprobs.tokens, c.logprobs.top_logprobs, strict=True))
    assert answer.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in answer.choices)


def test_the_same_seed_gives_the_same_text_and_another_seed_another(client) -> None:
    def text(seed: int) -> str:
        return client.completions.create(model="chat", prompt="Once", max_tokens=16, temperature=1.0, seed=seed)

    first, again = text(7), text(7)
    assert first.choices[0].text == again.choices[0].text
    others = {text(seed).choices[0].text for seed in (8, 9, 10)}
    assert others - {first.choices[0].text}, "three other seeds all gave the same text"


def test_a_stop_string_ends_the_answer_and_never_shows(client) -> None:
    free = client.completions.create(model="chat", prompt="Hello", max_tokens=24, temperature=0).choices[0].text
    assert len(free) >= 4, free
    stop = free[2:4]  # two characters from inside the greedy answer: a stop that may span tokens
    for stream in (False, True):
        answer = client.completions.create(
            model="chat", prompt="Hello", max_tokens=24, temperature=0, stop=[stop], stream=stream
        )
        parts = [c.choices[0].text for c in answer if c.choices] if stream else [answer.choices[0].text]
        text = "".join(parts)
        assert text == free[: free.index(stop)], (stream, stop, free, parts)


def test_the_clearml_vllm_preprocess_runs_and_its_edit_of_the_request_takes_effect(client) -> None:
    messages = [
        {"role": "system", "content": "one"},
        {"role": "system", "content": "two"},
        {"role": "user", "content": "Hi there, goodman!"},
    ]
    answer = client.chat.completions.create(model="test_vllm", messages=messages, max_tokens=3, temperature=1.0)
    assert answer.model_extra["system_prompts_seen"] == 1  # only the last system prompt reached the model
    assert answer.choices[0].message.content is not None
    completion = client.completions.create(model="test_vllm", prompt="Hi there, goodman!", max_tokens=4)
    assert completion.choices[0].text is not None
    assert {m.id for m in client.models.list(extra_body={"stream": False, "model": "test_vllm"}).data} >= {
        "chat",
        "test_vllm",
    }


def test_models_list_and_one_model_and_errors_in_openai_shape(llm_server: Server, client) -> None:
    assert client.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "nope" in missing.value.body["message"] if isinstance(missing.value.body, dict) else "nope" in str(missing)
    bad = llm_server.post("/serve/openai/v1/chat/completions", {"model": "chat", "messages": [], "tools": [{}]})
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
    unknown = _chat(llm_server, "chat", frobnicate=1)
    assert unknown.status_code == 400 and "frobnicate" in unknown.json()["error"]["message"]
    long = llm_server.post("/serve/openai/v1/completions", {"model": "chat", "prompt": "word " * 400, "max_tokens": 2})
    message = long.json()["error"]["message"]
    assert long.status_code == 400 and "256" in message, message


def test_serve_endpoint_takes_a_chat_body_and_streams_it(llm_server: Server) -> None:
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, "temperature": 0}
    plain = llm_server.post("/serve/chat", body)
    assert plain.status_code == 200 and plain.json()["object"] == "chat.completion"
    with llm_server.client.stream("POST", "/serve/chat", json={**body, "stream": True}) as answer:
        lines = [line for line in answer.iter_lines() if line]
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)


def test_a_client_that_goes_away_frees_its_slot(llm_server: Server) -> None:
    """`solo` runs one sequence at a time: a stream left after its first chunk must not hold the slot."""
    body = {"model": "solo", "prompt": "Once upon", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{llm_server.url}/serve/openai/v1/completions", json=body, timeout=30) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                break  # leave after the first chunk: the connection closes here

    def freed() -> bool:
        aborted = _metric(llm_server, "ferry_llm_request_success_total", "solo", "abort") >= 1
        return aborted and _metric(llm_server, "ferry_llm_num_requests_running", "solo") == 0

    llm_server.wait_for(freed, 10, "the sequence counted as aborted and its slot free")
    after = llm_server.post("/serve/openai/v1/completions", {"model": "solo", "prompt": "Hi", "max_tokens": 2})
    assert after.status_code == 200, after.text


def _metric(server: Server, name: str, endpoint: str, reason: str | None = None) -> float:
    """The value of one series of ``name`` for ``endpoint`` in /metrics (0 when absent)."""
    for line in server.client.get("/metrics").text.splitlines():
        wanted = reason is None or f'finished_reason="{reason}"' in line
        if line.startswith(name + "{") and f'endpoint="{endpoint}"' in line and wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_llm_metrics_count_tokens_and_time_the_first_and_the_following(llm_server: Server, client) -> None:
    before = _metric(llm_server, "ferry_llm_generation_tokens_total", "chat")
    answer = client.completions.create(
        model="chat", prompt="Hello", max_tokens=6, temperature=0, extra_body={"ignore_eos": True}
    )
    assert answer.usage.completion_tokens == 6
    assert _metric(llm_server, "ferry_llm_generation_tokens_total", "chat") - before == 6
    assert _metric(llm_server, "ferry_llm_time_to_first_token_seconds_count", "chat") >= 1
    assert _metric(llm_server, "ferry_llm_inter_token_latency_seconds_count", "chat") >= 5
    assert _metric(llm_server, "ferry_llm_request_success_total", "chat", "length") >= 1


def test_a_prompt_sent_twice_is_a_prefix_cache_hit_in_the_metrics(llm_server: Server, client) -> None:
    prompt = "Tell me about rivers, mountains and the sea. " * 6  # several KV blocks of 16 tokens
    names = ("ferry_llm_prefix_cache_queries_total", "ferry_llm_prefix_cache_hits_total")
    before = [_metric(llm_server, name, "chat") for name in names]
    for _ in range(2):
        answer = client.completions.create(model="chat", prompt=prompt, max_tokens=2, temperature=0)
    length = answer.usage.prompt_tokens
    queries, hits = (_metric(llm_server, name, "chat") - b for name, b in zip(names, before, strict=True))
    assert queries == 2 * length
    assert hits == (length - 1) // 16 * 16  # the second reused every full block but the one with its last token
    assert 0 <= _metric(llm_server, "ferry_llm_kv_cache_usage_perc", "chat") < 1


def test_past_max_waiting_a_request_gets_503_with_retry_after(llm_server: Server) -> None:
    body = {"model": "solo", "prompt": "Once upon", "max_tokens": 400, "ignore_eos": True}
    codes: list[int] = []

    def ask() -> None:
        codes.append(httpx.post(f"{llm_server.url}/serve/openai/v1/completions", json=body, timeout=60).status_code)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 503 in codes and 200 in codes, codes


def test_send_request_from_hooks_reaches_the_openai_routes_sync_and_async(llm_server: Server, client) -> None:
    direct = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
    )
    asked = llm_server.wait_endpoint("asks", {"q": "Hi"})
    assert asked["by_attribute"] == asked["by_key"] == direct.choices[0].message.content
    plain = client.completions.create(model="chat", prompt="Hi", max_tokens=3, temperature=0)
    asked_async = llm_server.wait_endpoint("asks_async", {"q": "Hi"})
    assert asked_async == {"text": plain.choices[0].text, "tokens": plain.usage.completion_tokens}


def test_status_says_the_vllm_endpoint_is_served_by_the_llm_engine(llm_server: Server, e2e_ferry, e2e_service) -> None:
    out = e2e_ferry("--id", e2e_service, "status").out
    assert "test_vllm: engine vllm is served by ferry's llm engine" in " ".join(out.split()), out


def test_embeddings_are_answered_by_an_endpoint_marked_for_them(llm_server: Server, client) -> None:
    llm_server.wait_endpoint("embed", {"text": "x"})
    for encoding in ("float", "base64", None):  # None: the client asks for base64 and decodes it itself
        extra = {"encoding_format": encoding} if encoding else {}
        answer = client.embeddings.create(model="embed", input=["one two", "three"], **extra)
        vectors = [d.embedding for d in answer.data]
        if encoding == "base64":  # little-endian float32, as OpenAI sends it
            vectors = [np.frombuffer(base64.b64decode(v), "<f4").tolist() for v in vectors]
        assert vectors == [[7.0, 0.5, -1.0], [5.0, 0.5, -1.0]], encoding
        assert [d.index for d in answer.data] == [0, 1] and answer.usage.prompt_tokens == 3
    single = client.embeddings.create(model="embed", input="abc")
    assert single.data[0].embedding == [3.0, 0.5, -1.0]
    with pytest.raises(openai.NotFoundError, match="not an embeddings endpoint"):
        client.embeddings.create(model="chat", input="abc")
    with pytest.raises(openai.BadRequestError, match="input"):
        client.embeddings.create(model="embed", input=[])


def test_postprocess_sees_whole_answers_and_postprocess_chunk_each_chunk(client) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    whole = client.chat.completions.create(model="shout", messages=messages, max_tokens=8, temperature=0)
    assert whole.model_extra["whole"] is True
    chunks = list(
        client.chat.completions.create(model="shout", messages=messages, max_tokens=8, temperature=0, stream=True)
    )
    assert [c.model_extra["seen"] for c in chunks] == list(range(1, len(chunks) + 1))  # one state per request
    assert all("whole" not in c.model_extra for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content.upper()


def test_schemathesis_over_the_openai_routes_finds_no_5xx_and_answers_as_documented(llm_server: Server, tmp_path):
    """Generated requests to /serve/openai/v1 with LLM endpoints served: every answer is one the document declares
    (no 5xx; OpenAI's error body), generation included for the bodies that are valid."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "run", f"{llm_server.url}/openapi.json",
        "--include-path-regex", "^/serve/openai/", "--checks", "all",
        # one worker: schemathesis' threads describe strategies with ast.parse at once, which CPython 3.11 can
        # fail ("AST constructor recursion depth mismatch", a CI run of the OpenAI routes' fuzz)
        "--exclude-checks", "positive_data_acceptance", "--max-examples", str(examples(20)), "--workers", "1",
        "--seed", "1", "--suppress-health-check", "all",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert llm_server.client.get("/health/ready").status_code == 200


def test_response_format_json_schema_is_followed_by_the_answer(client) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Lyon"]}, "rank": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["city", "rank"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Which city?"}],
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    parsed = json.loads(answer.choices[0].message.content)
    assert parsed["city"] in ("Paris", "Lyon") and 1 <= parsed["rank"] <= 9 and set(parsed) == {"city", "rank"}
    assert answer.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nope"}}},
        )  # fmt: skip


def test_the_console_s_chat_box_streams_an_answer_from_an_llm_endpoint(llm_server: Server, e2e_service: str) -> None:
    """Chromium on the service page: a message typed in the chat box of `chat` gets a streamed answer, shown as text."""
    with chromium_page() as (page, problems):
        page.goto(f"{llm_server.url}/console/services/{e2e_service}")
        answer, bold = _chat_in_page(page)
    assert answer and not answer.startswith("error:"), answer
    assert not problems and bold == 0


def _chat_in_page(page) -> tuple[str, int]:
    """Send a message with markup from the service page's chat box of `chat`: the answer, and how many <b> it made."""
    box = page.locator('form.chat[data-endpoint="chat"]')
    box.locator("textarea").fill("Hello <b>there</b>")
    box.locator("button").click()
    box.locator('.answer[data-done="1"]').wait_for(timeout=30000)
    return box.locator(".answer").inner_text(), page.evaluate(
        "() => document.querySelectorAll('form.chat .answer b').length"
    )


def test_the_chat_box_works_behind_serve_tokens(e2e_home: Path, e2e_ferry: Ferry, llm_server: Server, tmp_path: Path):
    """A server whose routes need a token: the browser logs in with a serve token and chats (the login cookie stands
    for the bearer header, through /console/chat); that route wants the console's header and a token."""
    sid = e2e_ferry.service("locked chat")  # one LLM endpoint: the tiny model that llm_server's set-up uploaded
    e2e_ferry(
        "--id", sid, "model", "add", "--engine", "llm", "--endpoint", "chat", "--name", "tiny", "--project", "llm"
    )
    (tmp_path / "tokens").write_text("reader-token  # Ada Lovelace\n")
    server = Server(e2e_home.parent, "--id", sid, "--token-file", str(tmp_path / "tokens"), env=FAST_POLL)
    try:
        server.wait_ready(timeout=60)
        body = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert server.post("/console/chat", body).status_code == 401  # no token, no cookie
        with chromium_page() as (page, problems):
            page.goto(f"{server.url}/console/services/{sid}")  # sent to the login page first
            page.fill("#token", "reader-token")
            page.click("form.login button")
            page.wait_for_url(f"{server.url}/console/")  # logged in: the cookie is set
            page.goto(f"{server.url}/console/services/{sid}")
            answer, bold = _chat_in_page(page)
            seen = list(problems)  # before the refused fetch below logs its 403
            bare = page.evaluate(CHAT_WITHOUT_HEADER, body)
    finally:
        server.stop()
    assert answer and not answer.startswith("error:"), answer
    assert not seen and bold == 0
    assert bare == 403  # the cookie alone does not chat: a page of another site could not add the header


CHAT_WITHOUT_HEADER = """async (body) => (await fetch("/console/chat", {
    method: "POST", body: JSON.stringify(body), headers: {"content-type": "application/json"}})).status"""
