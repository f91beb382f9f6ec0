"""The vllm engine on a stand-in of vLLM (tests/engines/vllm_standin): set up as ClearML sets vLLM up, answering and
streaming OpenAI's shapes from vLLM's DELTA outputs, aborting what a client left; and when ``--engine vllm`` gets
vLLM's engine or ferry's llm engine, and why."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

from openai.types import Completion  # noqa: E402
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from ferry.control.spec import EndpointSpec  # noqa: E402
from ferry.engines import load_engine  # noqa: E402
from ferry.engines.llm import LLMEngine  # noqa: E402
from ferry.engines.loading import engine_class, vllm_unavailable  # noqa: E402
from ferry.engines.vllm import VLLMEngine, engine_config  # noqa: E402
from ferry.errors import EngineError, InvalidInput, Overloaded  # noqa: E402
from ferry.metrics.llm import LLMFamilies  # noqa: E402
from ferry.streams import Stream  # noqa: E402
from tests.llm.tiny import build_tiny_llama  # noqa: E402

STANDIN = Path(__file__).parent / "vllm_standin"
NOT_INSTALLED = "vLLM is not installed: pip install 'ferry[vllm]'"
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny Llama's config and tokenizer (a ChatML template; context 512)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _forget_vllm() -> None:
    for name in [name for name in sys.modules if name == "vllm" or name.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stand-in importable as ``vllm``, picked without a GPU (FERRY_VLLM_FORCE=1); no VLLM_ENGINE_ARGS."""
    _forget_vllm()
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.setenv("FERRY_VLLM_FORCE", "1")
    monkeypatch.delenv("VLLM_ENGINE_ARGS", raising=False)
    yield
    _forget_vllm()


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import vllm`` fails as where it is not installed (whatever this machine has)."""
    _forget_vllm()
    monkeypatch.setitem(sys.modules, "vllm", None)


@pytest.fixture
def make(standin: None, tiny_llama: Path) -> Iterator[Callable[..., VLLMEngine]]:
    """Builds a vllm endpoint's engine on the stand-in, as the loading thread does (no event loop); closes it."""
    made: list[VLLMEngine] = []

    def build(aux: dict[str, Any] | None = None, version: str = "", loaded: Any = None) -> VLLMEngine:
        spec = EndpointSpec(name="chat", version=version, engine="vllm", model_id="m", aux_config=aux or {})
        engine = load_engine(spec, tiny_llama, loaded, None)
        assert isinstance(engine, VLLMEngine)
        made.append(engine)
        return engine

    yield build
    for engine in made:
        engine.close()


def chat(**fields: Any) -> dict[str, Any]:
    return {"request": {"model": "chat", "messages": HELLO, **fields}, "route": "chat/completions"}


def completion(prompt: Any, **fields: Any) -> dict[str, Any]:
    return {"request": {"model": "chat", "prompt": prompt, **fields}, "route": "completions"}


async def read(stream: Stream) -> list[dict]:
    return [chunk async for chunk in stream]


def answers(engine: VLLMEngine, *bodies: dict[str, Any]) -> list[Any]:
    """Each body's answer (a stream read whole: its chunks), in turn on one event loop, as ferry's serves an
    engine (vLLM's, and so the stand-in, is bound to the loop it first runs on)."""

    async def ask() -> list[Any]:
        results = []
        for body in bodies:
            result = await engine.run(body, {}, None)
            results.append(await read(result) if isinstance(result, Stream) else result)
        return results

    return asyncio.run(ask())


# ---- which engine serves --engine vllm ----------------------------------------------------------------------------


def test_with_vllm_importable_and_forced_the_vllm_engine_is_vllms_own(standin: None) -> None:
    assert vllm_unavailable() is None
    assert engine_class("vllm") is VLLMEngine


def test_without_vllm_the_llm_engine_serves_vllm_endpoints_and_says_why(no_vllm: None, monkeypatch) -> None:
    monkeypatch.setenv("FERRY_VLLM_FORCE", "1")  # forcing skips the GPU check, never the import
    assert vllm_unavailable() == NOT_INSTALLED
    assert engine_class("vllm") is LLMEngine


def test_without_a_gpu_the_llm_engine_serves_vllm_endpoints_and_says_why(standin: None, monkeypatch) -> None:
    import torch

    monkeypatch.delenv("FERRY_VLLM_FORCE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vllm_unavailable() == "no GPU: torch.cuda.is_available() is False"
    assert engine_class("vllm") is LLMEngine


def test_the_llm_engines_warning_for_a_vllm_endpoint_names_the_reason(no_vllm: None, tiny_llama: Path, caplog) -> None:
    spec = EndpointSpec(name="chat", engine="vllm", model_id="m")
    with caplog.at_level(logging.WARNING, logger="ferry"):
        engine = load_engine(spec, tiny_llama, None, None)
    engine.close()
    assert isinstance(engine, LLMEngine)
    assert f"endpoint chat: engine vllm is served by ferry's llm engine ({NOT_INSTALLED})" in caplog.text


# ---- set up as ClearML sets vLLM up --------------------------------------------------------------------------------


def test_vllm_engine_args_reach_vllm_with_the_aux_config_over_them(make, tiny_llama: Path, monkeypatch) -> None:
    env = """'{"gpu_memory_utilization": 0.5, "max_num_seqs": 8, "enforce_eager": true, "dtype": "float16"}'"""
    monkeypatch.setenv("VLLM_ENGINE_ARGS", env)  # quoted as a shell line quotes it: ClearML drops single quotes
    template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    aux = {"max_num_seqs": 4, "max_model_len": 256, "max_waiting": 3, "chat_template": template}
    engine = make(aux, version="2")
    assert engine.engine_args.kwargs == {
        "gpu_memory_utilization": 0.5,
        "max_num_seqs": 4,
        "enforce_eager": True,
        "dtype": "float16",
        "max_model_len": 256,
        "model": str(tiny_llama),
        "served_model_name": "chat/2",
    }
    assert engine.engine.usage_context.name == "OPENAI_API_SERVER"
    assert (engine.max_model_len, engine.max_num_seqs, engine.max_waiting) == (256, 4, 3)
    assert engine.tokenizer.decode(engine.render_chat(HELLO)) == "[Be brief.][Hello]"


def test_an_engine_argument_vllm_does_not_know_fails_the_load_naming_it(make, monkeypatch) -> None:
    monkeypatch.setenv("VLLM_ENGINE_ARGS", '{"max_num_seqs": 2, "no_such_argument": 1}')
    with pytest.raises(EngineError, match="no_such_argument.*VLLM_ENGINE_ARGS"):
        make()
    monkeypatch.setenv("VLLM_ENGINE_ARGS", "{not json")
    with pytest.raises(EngineError, match="VLLM_ENGINE_ARGS is not JSON"):
        make()


def test_a_folder_holding_one_gguf_file_is_loaded_as_that_file(tmp_path: Path, tiny_llama: Path) -> None:
    (tmp_path / "model.Q4_0.gguf").write_bytes(b"GGUF")
    spec = EndpointSpec(name="chat", engine="vllm", model_id="m")
    assert engine_config(spec, tmp_path)["model"] == str(tmp_path / "model.Q4_0.gguf")
    assert engine_config(spec, tiny_llama)["model"] == str(tiny_llama)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_the_tokenizer_is_vllms_whether_get_tokenizer_is_a_coroutine_or_not(make, kind: str, monkeypatch) -> None:
    if kind == "sync":  # newer vLLM returns it directly
        async_llm = importlib.import_module("vllm.v1.engine.async_llm").AsyncLLM
        monkeypatch.setattr(async_llm, "get_tokenizer", lambda self: self.tokenizer)
    engine = make()
    assert engine.tokenizer is engine.engine.tokenizer


# ---- answers --------------------------------------------------------------------------------------------------------


def test_a_chat_answer_is_openai_shaped_and_generated_from_the_rendered_prompt(make) -> None:
    engine = make()
    answer = ChatCompletion.model_validate(*answers(engine, chat(max_tokens=5)))
    (request,) = engine.engine.requests.values()
    rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert engine.tokenizer.decode(request.prompt_token_ids) == rendered
    assert answer.choices[0].message.content == engine.tokenizer.decode(request.token_ids)
    assert answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(request.prompt_token_ids), 5)


def test_completions_of_several_prompts_and_choices_echo_and_count_each_prompt_once(make) -> None:
    engine = make()
    body = completion(["Hello there", "The quick brown fox"], n=2, echo=True, seed=7, max_tokens=3)
    answer = Completion.model_validate(*answers(engine, body))
    requests = list(engine.engine.requests.values())
    assert [r.params.seed for r in requests] == [7, 8, 7, 8]  # n choices of one seed differ, reproducibly
    assert [c.text.split()[0] for c in answer.choices] == ["Hello", "Hello", "The", "The"]
    assert answer.usage.prompt_tokens == len(requests[0].prompt_token_ids) + len(requests[2].prompt_token_ids)
    assert answer.usage.completion_tokens == 12


def test_a_streamed_chat_has_openai_chunks_the_whole_answers_text_and_its_usage(make) -> None:
    engine = make()
    answer, streamed = answers(engine, chat(), chat(stream=True, stream_options={"include_usage": True}))
    whole = ChatCompletion.model_validate(answer)
    chunks = [ChatCompletionChunk.model_validate(c) for c in streamed]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason == "stop"
    assert chunks[-1].usage == whole.usage and whole.usage.completion_tokens == 13  # 12 tokens, then end of sequence
    prompt_tokens = whole.usage.prompt_tokens
    assert [r.params.max_tokens for r in engine.engine.requests.values()] == [512 - prompt_tokens] * 2


def test_log_probabilities_come_with_the_top_alternatives_in_rank_order(make) -> None:
    engine = make()
    answer, chunks = answers(
        engine,
        chat(max_tokens=4, logprobs=True, top_logprobs=3),
        completion("Hi", max_tokens=3, logprobs=1, stream=True),
    )
    answer = ChatCompletion.model_validate(answer)
    content = answer.choices[0].logprobs.content
    assert "".join(lp.token for lp in content) == answer.choices[0].message.content
    for lp in content:
        assert lp.logprob == -0.25
        assert [top.logprob for top in lp.top_logprobs] == [-0.25, -2.0, -3.0]
        assert lp.top_logprobs[0].token == lp.token
    last = Completion.model_validate(chunks[-1])  # the only chunk with a finish reason, which the type requires
    assert last.choices[0].finish_reason == "length" and last.choices[0].logprobs is not None
    tops = [top for c in chunks for top in c["choices"][0]["logprobs"]["top_logprobs"]]
    assert len(tops) == 3 and all(len(top) == 1 for top in tops)


def test_the_requests_sampling_fields_reach_vllms_sampling_params(make) -> None:
    probe, engine = make(), make()  # the stand-in's tokens depend on the prompt only: the probe's come again
    answers(probe, chat(max_tokens=8))
    fourth = next(iter(probe.engine.requests.values())).token_ids[3]
    fields = dict(temperature=0.3, top_p=0.9, top_k=0, min_p=0.1, seed=11, presence_penalty=0.5, frequency_penalty=0.25)
    fields |= dict(repetition_penalty=1.1, max_tokens=20, min_tokens=2, stop=["zz"], ignore_eos=True)
    answer, _ = answers(engine, chat(**fields, stop_token_ids=[fourth]), chat(top_k=5, max_tokens=2))
    stopped, top_5 = (request.params for request in engine.engine.requests.values())
    assert {name: getattr(stopped, name) for name in fields} == {**fields, "top_k": -1}  # vLLM's "off" is -1
    assert (stopped.n, stopped.stop_token_ids, stopped.output_kind.name, top_5.top_k) == (1, [fourth], "DELTA", 5)
    answer = ChatCompletion.model_validate(answer)
    assert (answer.choices[0].finish_reason, answer.usage.completion_tokens) == ("stop", 4)  # ended by the stop token


# ---- abort, overload, close -----------------------------------------------------------------------------------------


def test_closing_a_stream_early_aborts_its_request_in_vllm(make) -> None:
    engine = make()
    registry = CollectorRegistry()
    engine.attach_meter(LLMFamilies(registry).meter("chat", "1"))

    async def leave_early() -> tuple[list[str], int]:
        stream = await engine.run(chat(stream=True, max_tokens=300, ignore_eos=True), {}, None)
        for _ in range(4):
            await stream.__anext__()
        await stream.aclose()
        for _ in range(200):  # the abort is awaited by the cancelled sequence's task
            if engine.engine.aborted:
                break
            await asyncio.sleep(0.01)
        (request,) = engine.engine.requests.values()
        generated = len(request.token_ids)
        await asyncio.sleep(0.05)
        return engine.engine.aborted, generated

    aborted, generated = asyncio.run(leave_early())
    ((request_id, request),) = engine.engine.requests.items()
    assert aborted == [request_id]
    assert len(request.token_ids) == generated < 300  # nothing generated after the abort
    assert engine.counts() == (0, 0)
    labels = {"endpoint": "chat", "version": "1", "finished_reason": "abort"}
    assert registry.get_sample_value("ferry_llm_request_success_total", labels) == 1


def test_past_max_num_seqs_and_max_waiting_a_request_is_refused_with_503(make) -> None:
    engine = make({"max_num_seqs": 1, "max_waiting": 1})
    registry = CollectorRegistry()
    engine.attach_meter(LLMFamilies(registry).meter("chat", "1"))

    async def three() -> None:
        streams = [await engine.run(completion("Hi", stream=True, max_tokens=50), {}, None) for _ in range(2)]
        for stream in streams:
            await stream.__anext__()
        engine.refresh_meter()
        with pytest.raises(Overloaded, match="max_waiting=1, max_num_seqs=1"):
            await engine.run(completion("Hi", max_tokens=2), {}, None)
        for stream in streams:
            await stream.aclose()
        await asyncio.sleep(0.05)
        answer = await engine.run(completion("Hi", max_tokens=2), {}, None)
        assert answer["usage"]["completion_tokens"] == 2

    asyncio.run(three())
    labels = {"endpoint": "chat", "version": "1"}
    assert registry.get_sample_value("ferry_llm_num_requests_running", labels) == 1
    assert registry.get_sample_value("ferry_llm_num_requests_waiting", labels) == 1


def test_close_shuts_vllm_down_and_later_requests_are_refused(make) -> None:
    engine = make()
    engine.close()
    assert engine.engine.is_shut_down
    with pytest.raises(EngineError, match="unloaded"):
        answers(engine, chat(max_tokens=2))


def test_a_response_format_the_vllm_engine_cannot_honour_is_refused_naming_it(make) -> None:
    engine = make()
    with pytest.raises(InvalidInput) as refused:
        answers(engine, chat(max_tokens=2, response_format={"type": "json_object"}))
    assert refused.value.details.get("param") == "response_format"
    assert not engine.engine.requests  # never sent to vLLM unconstrained
