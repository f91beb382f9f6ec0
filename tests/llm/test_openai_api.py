"""ferry.llm.openai_api: request bodies checked field by field; answers and chunks read back by the openai client."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Completion, CompletionUsage, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage

from ferry.llm.openai_answers import (
    ChatChunks,
    Choice,
    CompletionChunks,
    chat_answer,
    completion_answer,
    embeddings_answer,
    model_card,
    models_list,
    new_id,
    usage,
)
from ferry.llm.openai_api import (
    MAX_N,
    EmbeddingRequest,
    GenerationRequest,
    InvalidRequest,
    error_body,
    parse_chat,
    parse_completion,
    parse_embeddings,
)
from ferry.llm.params import SamplingParams, Step, TokenLogprob, TopLogprob
from tests.budget import examples


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "Once", **fields}


def refused(parse: Any, body: Any, param: str | None, *words: str) -> InvalidRequest:
    """Asserts ``parse(body)`` refuses with ``param`` named and each of ``words`` in the message."""
    with pytest.raises(InvalidRequest) as caught:
        parse(body)
    assert caught.value.param == param, caught.value.message
    for word in words:
        assert word in caught.value.message
    return caught.value


# ---- honoured fields -------------------------------------------------------------------------------------------


def test_a_minimal_chat_body_has_the_defaults() -> None:
    request = parse_chat(chat())
    assert request.kind == "chat" and request.model == "m"
    assert request.messages == [{"role": "user", "content": "hi"}]
    assert request.prompts == [] and request.n == 1
    assert request.params == SamplingParams()
    assert request.params.temperature == 1.0
    assert not request.stream and not request.include_usage and not request.echo
    assert request.user is None and request.accepted_without_effect == ()


def test_every_honoured_chat_field_reaches_the_sampling_params() -> None:
    body = chat(
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        seed=7,
        stop=["\n\n", "END"],
        n=3,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logprobs=True,
        top_logprobs=4,
        top_k=40,
        min_p=0.05,
        min_tokens=2,
        ignore_eos=True,
        repetition_penalty=1.1,
        stop_token_ids=[2, 32000],
        stream=True,
        stream_options={"include_usage": True},
    )
    request = parse_chat(body)
    assert request.params == SamplingParams(
        max_tokens=50,
        min_tokens=2,
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.1,
        stop=("\n\n", "END"),
        stop_token_ids=(2, 32000),
        ignore_eos=True,
        logprobs=4,
    )
    assert request.n == 3 and request.stream and request.include_usage


def test_a_completion_body_keeps_its_prompt_logprobs_and_echo() -> None:
    request = parse_completion(completion(logprobs=5, max_tokens=8, n=2))
    assert request.kind == "completion" and request.messages is None
    assert request.prompts == ["Once"] and request.n == 2
    assert request.params.logprobs == 5 and request.params.max_tokens == 8
    assert parse_completion(completion(echo=True)).echo
    assert parse_completion(completion(logprobs=0)).params.logprobs == 0


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 10}, 10),
        ({"max_completion_tokens": 20}, 20),
        ({"max_tokens": 10, "max_completion_tokens": 20}, 20),
    ],
)
def test_max_completion_tokens_wins_over_max_tokens(fields: dict[str, Any], expected: int) -> None:
    assert parse_chat(chat(**fields)).params.max_tokens == expected


def test_max_tokens_is_checked_even_when_max_completion_tokens_wins() -> None:
    refused(parse_chat, chat(max_tokens=0, max_completion_tokens=5), "max_tokens", "at least 1, got 0")


@pytest.mark.parametrize(("top_k", "expected"), [(-1, 0), (0, 0), (1, 1), (40, 40)])
def test_top_k_minus_one_and_zero_mean_off(top_k: int, expected: int) -> None:
    assert parse_chat(chat(top_k=top_k)).params.top_k == expected


@pytest.mark.parametrize(("stop", "expected"), [("END", ("END",)), (["a", "b"], ("a", "b")), ([], ()), (None, ())])
def test_stop_is_a_string_or_a_list(stop: Any, expected: tuple[str, ...]) -> None:
    assert parse_chat(chat(stop=stop)).params.stop == expected


@pytest.mark.parametrize("stop", ["", [""], ["a", "b", "c", "d", "e"], [1], {"a": 1}])
def test_stop_refuses_empty_strings_more_than_four_and_non_strings(stop: Any) -> None:
    refused(parse_chat, chat(stop=stop), "stop", "up to 4 non-empty strings")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({}, None), ({"logprobs": False}, None), ({"logprobs": True}, 0), ({"logprobs": True, "top_logprobs": 5}, 5)],
)
def test_chat_logprobs_is_a_bool_with_top_logprobs(fields: dict[str, Any], expected: int | None) -> None:
    assert parse_chat(chat(**fields)).params.logprobs == expected


@pytest.mark.parametrize("fields", [{"top_logprobs": 3}, {"logprobs": False, "top_logprobs": 0}])
def test_top_logprobs_without_logprobs_is_refused(fields: dict[str, Any]) -> None:
    refused(parse_chat, chat(**fields), "top_logprobs", "logprobs")


def test_stream_options_needs_stream_and_only_include_usage() -> None:
    assert parse_completion(completion(stream=True, stream_options={"include_usage": True})).include_usage
    assert not parse_chat(chat(stream=True, stream_options={})).include_usage
    refused(parse_chat, chat(stream_options={"include_usage": True}), "stream_options", "stream is true")
    options = {"include_usage": True, "continuous_usage_stats": True}
    refused(parse_chat, chat(stream=True, stream_options=options), "stream_options", "include_usage")
    refused(parse_chat, chat(stream=True, stream_options={"include_usage": 1}), "include_usage", "true or false")


# ---- ranges and types -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", 3, "temperature must be between 0 and 2, got 3"),
        ("temperature", -0.1, "temperature must be between 0 and 2, got -0.1"),
        ("temperature", math.nan, "temperature must be between 0 and 2"),
        ("temperature", "hot", 'temperature must be a number, got "hot"'),
        ("top_p", 0, "top_p must be greater than 0 and at most 1, got 0"),
        ("top_p", 1.5, "top_p must be greater than 0 and at most 1"),
        ("n", 0, "n must be between 1 and 16, got 0"),
        ("n", MAX_N + 1, "n must be between 1 and 16, got 17"),
        ("n", 1.5, "n must be an integer, got 1.5"),
        ("max_tokens", 0, "max_tokens must be at least 1, got 0"),
        ("max_tokens", True, "max_tokens must be an integer, got true"),
        ("max_completion_tokens", -5, "max_completion_tokens must be at least 1"),
        ("presence_penalty", 2.5, "presence_penalty must be between -2 and 2, got 2.5"),
        ("frequency_penalty", -3, "frequency_penalty must be between -2 and 2, got -3"),
        ("min_p", 1.5, "min_p must be between 0 and 1"),
        ("repetition_penalty", 0, "repetition_penalty must be greater than 0, got 0"),
        ("seed", 2**64, "seed must be between"),
        ("top_k", -2, "top_k must be -1 or 0 (off) or at least 1, got -2"),
        ("min_tokens", -1, "min_tokens must be at least 0"),
        ("stream", "yes", 'stream must be true or false, got "yes"'),
        ("ignore_eos", 1, "ignore_eos must be true or false"),
        ("logprobs", 1, "logprobs must be true or false"),
        ("stop_token_ids", [-1], "stop_token_ids must be a list of token ids"),
        ("user", 5, "user must be a string"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field_and_the_valid_range(field: str, value: Any, message: str) -> None:
    refused(parse_chat, chat(**{field: value}), field, message)


def test_top_logprobs_is_at_most_20() -> None:
    refused(parse_chat, chat(logprobs=True, top_logprobs=21), "top_logprobs", "between 0 and 20, got 21")


@pytest.mark.parametrize(("value", "message"), [(21, "between 0 and 20, got 21"), (True, "must be an integer")])
def test_completion_logprobs_is_an_integer_up_to_20(value: Any, message: str) -> None:
    refused(parse_completion, completion(logprobs=value), "logprobs", message)


def test_min_tokens_may_not_exceed_max_tokens() -> None:
    refused(parse_chat, chat(max_tokens=4, min_tokens=5), "min_tokens", "at most max_tokens (4), got 5")
    assert parse_chat(chat(max_tokens=4, min_tokens=4)).params.min_tokens == 4


@pytest.mark.parametrize("body", [[], "hello", None, 3])
def test_a_body_that_is_not_an_object_is_refused(body: Any) -> None:
    for parse in (parse_chat, parse_completion, parse_embeddings):
        refused(parse, body, None, "must be a JSON object")


@pytest.mark.parametrize("model", [None, "", 5])
def test_the_model_is_required(model: Any) -> None:
    body = chat(model=model)
    refused(parse_chat, body, "model", "model must be a non-empty string")
    del body["model"]
    refused(parse_chat, body, "model")


# ---- accepted without effect, refused, unknown ----------------------------------------------------------------


def test_fields_accepted_without_effect_are_listed_for_the_log() -> None:
    without_effect = {
        "store": False,
        "metadata": {"team": "a"},
        "parallel_tool_calls": True,
        "service_tier": "auto",
        "user": "u-1",
        "response_format": {"type": "text"},
        "tool_choice": "none",
        "logit_bias": {},
        "tools": [],
        "modalities": ["text"],
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
    }
    request = parse_chat(chat(**without_effect, audio=None, prediction=None))
    assert set(request.accepted_without_effect) == set(without_effect)
    assert request.user == "u-1" and request.params == SamplingParams()


def test_best_of_one_is_accepted_by_completions() -> None:
    assert parse_completion(completion(best_of=1)).accepted_without_effect == ("best_of",)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("tools", [{"type": "function", "function": {"name": "f"}}], ["tools", "not supported"]),
        ("tool_choice", "auto", ["tool_choice", "not supported"]),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}, ["tool_choice"]),
        ("functions", [{"name": "f"}], ["functions"]),
        ("function_call", "auto", ["function_call"]),
        ("response_format", "text", ["response_format"]),
        ("logit_bias", {"50256": -100}, ["logit_bias", "not supported"]),
        ("audio", {"voice": "alloy", "format": "wav"}, ["audio"]),
        ("modalities", ["text", "audio"], ["modalities"]),
        ("prediction", {"type": "content", "content": "x"}, ["prediction"]),
        ("web_search_options", {}, ["web_search_options"]),
        ("skip_special_tokens", False, ["skip_special_tokens"]),
        ("include_stop_str_in_output", True, ["include_stop_str_in_output"]),
    ],
)
def test_refused_chat_fields_are_named(field: str, value: Any, words: list[str]) -> None:
    refused(parse_chat, chat(**{field: value}), field, *words)


@pytest.mark.parametrize(("field", "value"), [("suffix", " end"), ("best_of", 2), ("logit_bias", {"1": 1})])
def test_refused_completion_fields_are_named(field: str, value: Any) -> None:
    refused(parse_completion, completion(**{field: value}), field, field)


def test_echo_with_logprobs_is_refused() -> None:
    refused(parse_completion, completion(echo=True, logprobs=1), "echo", "logprobs")


@pytest.mark.parametrize(
    ("parse", "body", "field"),
    [
        (parse_chat, chat(foo=1), "foo"),
        (parse_chat, chat(prompt="x"), "prompt"),
        (parse_chat, chat(echo=True), "echo"),
        (parse_chat, chat(best_of=1), "best_of"),
        (parse_completion, completion(messages=[]), "messages"),
        (parse_completion, completion(max_completion_tokens=5), "max_completion_tokens"),
        (parse_completion, completion(tools=[]), "tools"),
        (parse_embeddings, {"model": "m", "input": "x", "temperature": 1}, "temperature"),
    ],
)
def test_an_unknown_field_is_refused(parse: Any, body: dict[str, Any], field: str) -> None:
    refused(parse, body, field, f"unknown field '{field}'")


# ---- response_format ------------------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_response_format_json_object_is_honoured() -> None:
    request = parse_chat(chat(response_format={"type": "json_object"}))
    assert json.loads(request.params.response_format) == {"type": "json_object"}
    assert "response_format" not in request.accepted_without_effect


def test_response_format_json_schema_is_honoured_with_its_properties_in_order() -> None:
    value = {
        "type": "json_schema",
        "json_schema": {"name": "person-1", "description": "who", "schema": PERSON, "strict": True},
    }
    request = parse_chat(chat(response_format=value))
    assert json.loads(request.params.response_format) == value
    assert list(json.loads(request.params.response_format)["json_schema"]["schema"]["properties"]) == ["name", "age"]
    assert "response_format" not in request.accepted_without_effect


def test_response_format_text_changes_nothing() -> None:
    request = parse_chat(chat(response_format={"type": "text"}))
    assert request.params.response_format is None and request.accepted_without_effect == ("response_format",)


def json_schema(**fields: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, **fields}}


@pytest.mark.parametrize(
    ("value", "param", "words"),
    [
        ({"type": "xml"}, "response_format", ["json_schema", "json_object"]),
        ({"type": "json_object", "schema": PERSON}, "response_format", ["json_object"]),
        ({"type": "json_schema"}, "response_format", ["json_schema"]),
        ({"type": "json_schema", "json_schema": []}, "response_format.json_schema", ["JSON object"]),
        ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "response_format.json_schema.name", ["name"]),
        (json_schema(name="a b"), "response_format.json_schema.name", ["letters"]),
        ({"type": "json_schema", "json_schema": {"name": "p"}}, "response_format.json_schema.schema", ["schema"]),
        (json_schema(schema=[1]), "response_format.json_schema.schema", ["schema object"]),
        (json_schema(strict="yes"), "response_format.json_schema.strict", ["true or false"]),
        (json_schema(examples=[]), "response_format.json_schema.examples", ["unknown field 'examples'"]),
        (json_schema(schema={"type": "strng"}), "response_format", ["JSON schema", "strng"]),
        (json_schema(schema={"type": "integer", "minimum": 3, "maximum": 1}), "response_format", ["minimum"]),
    ],
)
def test_a_response_format_of_another_shape_or_a_bad_schema_is_refused(
    value: Any, param: str, words: list[str]
) -> None:
    refused(parse_chat, chat(response_format=value), param, *words)


def test_completions_take_no_response_format() -> None:
    refused(parse_completion, completion(response_format={"type": "json_object"}), "response_format", "unknown")


# ---- messages --------------------------------------------------------------------------------------------------


def test_messages_are_normalised_to_role_and_text() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Sys"}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}],
            "name": "a",
        },
        {"role": "assistant", "content": None},
        {"role": "assistant"},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ]
    assert parse_chat(chat(messages=messages)).messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "Hello, world"},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "tool", "content": "42"},
    ]


def test_an_assistant_message_as_the_client_dumps_it_is_accepted() -> None:
    dumped = ChatCompletionMessage(role="assistant", content="Hi!").model_dump()
    assert parse_chat(chat(messages=[dumped])).messages == [{"role": "assistant", "content": "Hi!"}]


@pytest.mark.parametrize(
    ("messages", "param", "words"),
    [
        ([], "messages", ["non-empty list"]),
        ("hi", "messages", ["non-empty list"]),
        (["hi"], "messages[0]", ["must be a JSON object"]),
        ([{"role": "function", "content": "x"}], "messages[0].role", ["system, developer, user, assistant, tool"]),
        ([{"content": "x"}], "messages[0].role", ["got null"]),
        ([{"role": "user"}], "messages[0].content", ["required"]),
        ([{"role": "user", "content": 5}], "messages[0].content", ["string or a list of text parts"]),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
            "messages[0].content[0].type",
            ["image content parts are not supported"],
        ),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}],
            "messages[0].content[0].type",
            ["audio content parts"],
        ),
        (
            [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}],
            "messages[0].content[0].type",
            ["file content parts"],
        ),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0]", ['"type": "text"']),
        ([{"role": "user", "content": ["plain"]}], "messages[0].content[0]", ['"type": "text"']),
        ([{"role": "tool", "content": [{"type": "refusal", "refusal": "no"}]}], "messages[0].content[0]", ["text"]),
        (
            [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]}],
            "messages[0].tool_calls",
            ["not supported"],
        ),
        ([{"role": "user", "content": "x", "tool_calls": None}], "messages[0].tool_calls", ["unknown field"]),
        ([{"role": "user", "content": "x", "weight": 1}], "messages[0].weight", ["unknown field 'weight'"]),
    ],
)
def test_bad_messages_are_refused_naming_where(messages: Any, param: str, words: list[str]) -> None:
    refused(parse_chat, chat(messages=messages), param, *words)


# ---- prompts ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Once", ["Once"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_a_prompt_is_text_or_token_ids_one_or_many(prompt: Any, expected: list[Any]) -> None:
    assert parse_completion(completion(prompt=prompt)).prompts == expected


@pytest.mark.parametrize("prompt", ["", [], [""], ["a", ""], [[]], [[1], []]])
def test_an_empty_prompt_is_refused(prompt: Any) -> None:
    refused(parse_completion, completion(prompt=prompt), "prompt", "must not be empty")


@pytest.mark.parametrize("prompt", [None, 5, [1, "a"], [-1], [True], [["a"]], ["a", [1]], {"text": "a"}])
def test_a_prompt_of_another_shape_is_refused(prompt: Any) -> None:
    refused(parse_completion, completion(prompt=prompt), "prompt", "a list of lists of token ids")


# ---- answers ---------------------------------------------------------------------------------------------------


def token(text: str, logprob: float, *top: tuple[str, float]) -> TokenLogprob:
    return TokenLogprob(len(text), text, logprob, tuple(TopLogprob(i, t, lp) for i, (t, lp) in enumerate(top)))


LOGPROBS = [token("Hé", -0.1, ("Hé", -0.1), ("Hi", -2.5)), token("!", -0.5, ("?", -0.3))]


def test_new_ids_have_openai_prefixes_and_differ() -> None:
    assert new_id("chat").startswith("chatcmpl-") and new_id("completion").startswith("cmpl-")
    assert new_id("chat") != new_id("chat")
    with pytest.raises(ValueError):
        new_id("embedding")


def test_a_chat_answer_is_read_by_the_client_with_usage_counting_the_prompt_once() -> None:
    choices = [Choice("Hé!", "stop", LOGPROBS, 9, 2), Choice("Hello", "length", None, 9, 5)]
    answer = ChatCompletion.model_validate(chat_answer("chatcmpl-1", 1700000000, "m", choices))
    assert answer.object == "chat.completion" and answer.id == "chatcmpl-1" and answer.created == 1700000000
    assert [c.message.content for c in answer.choices] == ["Hé!", "Hello"]
    assert [c.index for c in answer.choices] == [0, 1]
    assert [c.finish_reason for c in answer.choices] == ["stop", "length"]
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (9, 7, 16)
    assert answer.choices[1].logprobs is None
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    content = logprobs.content
    assert [t.token for t in content] == ["Hé", "!"] and content[0].logprob == -0.1
    assert content[0].bytes == list("Hé".encode())
    assert [(t.token, t.logprob) for t in content[0].top_logprobs] == [("Hé", -0.1), ("Hi", -2.5)]


def test_a_completion_answer_echoes_and_counts_each_prompt_once() -> None:
    choices = [
        Choice(" upon", "stop", None, 2, 1),
        Choice(" more", "stop", None, 2, 1),
        Choice(" day", "length", None, 3, 4),
        Choice(" night", "stop", None, 3, 2),
    ]
    body = completion_answer("cmpl-1", 1, "m", choices, echo_prompts=["Once", "One fine"], n=2)
    answer = Completion.model_validate(body)
    assert [c.text for c in answer.choices] == ["Once upon", "Once more", "One fine day", "One fine night"]
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 8)
    assert completion_answer("cmpl-1", 1, "m", choices, echo_prompts=["Once", "One fine"]) == body
    assert completion_answer("cmpl-1", 1, "m", choices, n=2)["usage"]["prompt_tokens"] == 5
    assert completion_answer("cmpl-1", 1, "m", choices)["usage"]["prompt_tokens"] == 10


def test_completion_logprobs_hold_tokens_offsets_and_the_chosen_token_among_the_top() -> None:
    answer = Completion.model_validate(completion_answer("cmpl-1", 1, "m", [Choice("Hé!", "stop", LOGPROBS, 1, 2)]))
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["Hé", "!"] and logprobs.token_logprobs == [-0.1, -0.5]
    assert logprobs.text_offset == [0, 2]
    assert logprobs.top_logprobs == [{"Hé": -0.1, "Hi": -2.5}, {"?": -0.3, "!": -0.5}]


def test_minus_infinity_is_sent_as_a_json_number() -> None:
    body = chat_answer("c", 1, "m", [Choice("x", "stop", [token("x", -math.inf, ("y", -math.inf))], 1, 1)])
    json.dumps(body, allow_nan=False)
    assert body["choices"][0]["logprobs"]["content"][0]["logprob"] == -9999.0


def test_a_chat_stream_is_read_by_the_client() -> None:
    chunks = ChatChunks("chatcmpl-1", 5, "m")
    first = Step(text="Hé", token_ids=[1], logprobs=LOGPROBS[:1], prompt_tokens=4, completion_tokens=1)
    held_back = Step(text="", token_ids=[2], logprobs=LOGPROBS[1:], prompt_tokens=4, completion_tokens=2)
    last = Step(text="!", token_ids=[], finish_reason="stop", prompt_tokens=4, completion_tokens=2)
    sent = [
        chunks.role(0),
        chunks.delta(0, first),
        chunks.delta(0, held_back),
        chunks.delta(0, last),
        chunks.usage(4, 2),
    ]
    read = [ChatCompletionChunk.model_validate(chunk) for chunk in sent]
    assert all(c.object == "chat.completion.chunk" and c.id == "chatcmpl-1" for c in read)
    assert read[0].choices[0].delta.role == "assistant" and read[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in read[:4]) == "Hé!"
    assert read[2].choices[0].logprobs is not None and read[2].choices[0].logprobs.content is not None
    assert read[2].choices[0].logprobs.content[0].token == "!"
    assert [c.choices[0].finish_reason for c in read[:4]] == [None, None, None, "stop"]
    assert read[4].choices == [] and read[4].usage is not None and read[4].usage.total_tokens == 6


def test_a_step_with_nothing_to_send_makes_no_chunk() -> None:
    assert ChatChunks("c", 1, "m").delta(0, Step(token_ids=[5], completion_tokens=1)) is None
    assert CompletionChunks("c", 1, "m").delta(0, Step(token_ids=[5], completion_tokens=1)) is None


def test_a_completion_stream_keeps_text_offsets_across_chunks() -> None:
    chunks = CompletionChunks("cmpl-1", 5, "m")
    echo = chunks.echo(1, "Say")
    first = chunks.delta(1, Step(text="Hé", logprobs=LOGPROBS[:1], prompt_tokens=2, completion_tokens=1))
    last = chunks.delta(1, Step(text="!", logprobs=LOGPROBS[1:], finish_reason="length", completion_tokens=2))
    assert echo["choices"][0]["text"] == "Say" and first is not None and last is not None
    assert first["choices"][0]["logprobs"]["text_offset"] == [3]
    read = Completion.model_validate(last)
    assert read.object == "text_completion" and read.choices[0].index == 1
    assert read.choices[0].finish_reason == "length" and read.choices[0].logprobs is not None
    assert read.choices[0].logprobs.text_offset == [5]
    assert Completion.model_validate(chunks.usage(2, 2)).usage == CompletionUsage(
        prompt_tokens=2, completion_tokens=2, total_tokens=4
    )


def test_models_are_listed_as_openai_models() -> None:
    listed = models_list([("llama", 1700000000, "ferry"), ("qwen", 1700000001, "team")])
    assert listed["object"] == "list"
    models = [Model.model_validate(card) for card in listed["data"]]
    assert [(m.id, m.created, m.owned_by, m.object) for m in models] == [
        ("llama", 1700000000, "ferry", "model"),
        ("qwen", 1700000001, "team", "model"),
    ]
    assert model_card("llama", 1700000000, "ferry") == listed["data"][0]


def test_usage_and_error_bodies_have_openai_shapes() -> None:
    assert usage(3, 4) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert error_body("no", param="n", code=400) == {
        "error": {"message": "no", "type": "invalid_request_error", "param": "n", "code": 400}
    }
    error = refused(parse_chat, chat(temperature=3), "temperature")
    assert error.body()["error"]["param"] == "temperature" and isinstance(error, ValueError)


# ---- through the official client ------------------------------------------------------------------------------


def client_answering(status: int, body: Any) -> openai.OpenAI:
    """An openai client whose every request is answered with ``body`` (a list of chunks: a stream)."""

    def answer(request: httpx.Request) -> httpx.Response:
        if not isinstance(body, list):
            return httpx.Response(status, json=body)
        events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in body) + "data: [DONE]\n\n"
        return httpx.Response(status, content=events, headers={"content-type": "text/event-stream"})

    transport = httpx.MockTransport(answer)
    return openai.OpenAI(api_key="k", base_url="http://ferry.test/v1", http_client=httpx.Client(transport=transport))


def test_the_client_reads_an_aborted_stream_and_answer() -> None:
    chunks = ChatChunks("chatcmpl-1", 5, "m")
    sent = [chunks.role(0), chunks.delta(0, Step(text="Hal", finish_reason="abort", completion_tokens=1))]
    stream = client_answering(200, sent).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    read = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in read) == "Hal"
    assert read[-1].choices[0].finish_reason == "abort"
    answer = chat_answer("chatcmpl-2", 5, "m", [Choice("Hal", "abort", None, 1, 1)])
    got = client_answering(200, answer).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert got.choices[0].message.content == "Hal" and got.choices[0].finish_reason == "abort"


def test_the_client_reads_a_completion_stream() -> None:
    chunks = CompletionChunks("cmpl-1", 5, "m")
    steps = [Step(text="Once"), Step(text=" upon", finish_reason="stop")]
    sent = [chunks.delta(0, step) for step in steps] + [chunks.usage(1, 2)]
    read = list(client_answering(200, sent).completions.create(model="m", prompt="x", stream=True))
    assert "".join(c.choices[0].text for c in read if c.choices) == "Once upon"
    assert read[-1].usage is not None and read[-1].usage.completion_tokens == 2


def test_the_client_raises_a_bad_request_naming_the_param() -> None:
    error = refused(parse_chat, chat(n=99), "n")
    client = client_answering(400, error.body())
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], n=99)
    assert caught.value.param == "n" and "between 1 and 16" in caught.value.message


# ---- embeddings ------------------------------------------------------------------------------------------------


def test_an_embeddings_body_is_parsed() -> None:
    assert parse_embeddings({"model": "e", "input": "hi"}) == EmbeddingRequest("e", ["hi"], "float", None, None)
    request = parse_embeddings({"model": "e", "input": ["a", "b"], "encoding_format": "base64", "user": "u"})
    assert request.inputs == ["a", "b"] and request.encoding_format == "base64" and request.user == "u"


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"input": ""}, "input", ["non-empty"]),
        ({"input": []}, "input", ["non-empty"]),
        ({"input": ["a", ""]}, "input", ["non-empty"]),
        ({"input": None}, "input", ["non-empty"]),
        ({"input": [1, 2]}, "input", ["token-id inputs are not supported"]),
        ({"input": [[1, 2], [3]]}, "input", ["token-id inputs are not supported"]),
        ({"dimensions": 256}, "dimensions", ["not supported"]),
        ({"encoding_format": "int8"}, "encoding_format", ['"float" or "base64"']),
        ({"model": None}, "model", ["model"]),
    ],
)
def test_bad_embeddings_bodies_are_refused(fields: dict[str, Any], param: str, words: list[str]) -> None:
    refused(parse_embeddings, {"model": "e", "input": "hi", **fields}, param, *words)


def test_float_embeddings_are_read_by_the_client() -> None:
    answer = CreateEmbeddingResponse.model_validate(embeddings_answer("e", [[0.5, -1.0], [2.0, 0.0]], "float", 7))
    assert [d.embedding for d in answer.data] == [[0.5, -1.0], [2.0, 0.0]]
    assert [d.index for d in answer.data] == [0, 1] and answer.model == "e"
    assert answer.usage.prompt_tokens == 7 and answer.usage.total_tokens == 7


def test_base64_embeddings_decode_to_little_endian_float32() -> None:
    vectors = [[0.1, -2.5, 3.0e10], [1.0, 0.0, -0.0]]
    answer = embeddings_answer("e", vectors, "base64", 3)
    for item, vector in zip(answer["data"], vectors, strict=True):
        decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(vector, dtype=np.float32))


# ---- properties ------------------------------------------------------------------------------------------------


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8), _containers, max_leaves=12
)
CHAT_FIELDS = (  # noqa: SIM905 - one name a line would be 38 lines
    "model messages stream stream_options n max_tokens max_completion_tokens temperature top_p seed stop "
    "presence_penalty frequency_penalty logprobs top_logprobs top_k min_p min_tokens ignore_eos repetition_penalty "
    "stop_token_ids user store metadata parallel_tool_calls service_tier tools tool_choice response_format "
    "logit_bias modalities audio skip_special_tokens include_stop_str_in_output echo prompt suffix best_of"
).split()
MESSAGE = st.dictionaries(
    st.sampled_from(["role", "content", "name", "tool_calls", "refusal"]),
    st.sampled_from(["user", "assistant", "developer", "tool", "function"]) | JSON,
    max_size=4,
)
CHAT_VALUES = JSON | st.lists(MESSAGE, max_size=3) | st.sampled_from([0, 1, 2, -1, 0.5, True, "none", "text"])


def check_parsed(request: GenerationRequest) -> None:
    """What any accepted body guarantees to the engine loop."""
    assert 1 <= request.n <= MAX_N and isinstance(request.params, SamplingParams)
    assert 0 <= request.params.temperature <= 2 and 0 < request.params.top_p <= 1 and request.params.top_k >= 0
    if request.kind == "chat":
        assert request.messages and all(isinstance(m["content"], str) for m in request.messages)
    else:
        assert request.prompts and all(request.prompts)


@settings(max_examples=examples(200), deadline=None)
@given(JSON)
def test_any_json_is_parsed_or_refused_with_invalid_request(body: Any) -> None:
    for parse in (parse_chat, parse_completion):
        try:
            request = parse(body)
        except InvalidRequest:
            continue
        check_parsed(request)
    try:
        assert parse_embeddings(body).inputs
    except InvalidRequest:
        return


@settings(max_examples=examples(200), deadline=None)
@given(st.dictionaries(st.sampled_from(CHAT_FIELDS), CHAT_VALUES, max_size=4))
def test_a_mutated_chat_body_is_parsed_or_refused_with_invalid_request(changes: dict[str, Any]) -> None:
    try:
        request = parse_chat({**chat(), **changes})
    except InvalidRequest as error:
        assert error.message and (error.param is None or isinstance(error.param, str))
        return
    check_parsed(request)


@settings(max_examples=examples(200), deadline=None)
@given(st.dictionaries(st.sampled_from(CHAT_FIELDS), CHAT_VALUES, max_size=4))
def test_a_mutated_completion_body_is_parsed_or_refused_with_invalid_request(changes: dict[str, Any]) -> None:
    try:
        request = parse_completion({**completion(), **changes})
    except InvalidRequest:
        return
    check_parsed(request)
