"""response_format with llguidance: the tiny random Llama, sampled at temperature 1, still answers JSON its schema
accepts and ends with "stop"; min_tokens, ignore_eos and stop strings keep to the grammar; bad schemas and a server
without llguidance are refused naming the fix."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ferry.errors import InvalidInput
from ferry.llm import grammar
from ferry.llm.grammar import GrammarCompiler
from ferry.llm.loop import EngineLoop
from ferry.llm.model import LoadedLM, load_lm
from ferry.llm.openai_api import InvalidRequest, parse_chat
from ferry.llm.params import SamplingParams
from ferry.llm.sampling import Sampler
from tests.llm.sinks import Collector

pytestmark = pytest.mark.usefixtures("single_torch_thread")
SEEDS = range(6)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
COLOUR = {"enum": ["red", "green", "blue"]}
FLAGS = {"type": "array", "items": {"type": "boolean"}, "maxItems": 4}
COUNT = {"type": "integer", "minimum": 0, "maximum": 99999}
"""A top-level integer: the grammar may end after any digit, so the sequence ends on end of sequence."""


def is_person(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"name", "age"}
        and isinstance(value["name"], str)
        and len(value["name"]) <= 12
        and type(value["age"]) is int
        and 0 <= value["age"] <= 150
    )


def is_colour(value: Any) -> bool:
    return value in COLOUR["enum"]


def is_flags(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= 4 and all(type(v) is bool for v in value)


def is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= 99999


def schema_format(schema: dict[str, Any], strict: bool = True) -> str:
    return json.dumps({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}})


@pytest.fixture(scope="module")
def lm(tiny_llama: Path) -> LoadedLM:
    return load_lm(tiny_llama, dtype="float64", device="cpu")[0]


@pytest.fixture(scope="module")
def loop(lm: LoadedLM) -> Any:
    engine = EngineLoop(lm, "grammar", max_num_seqs=8)
    yield engine
    engine.close()


def run(loop: EngineLoop, lm: LoadedLM, params: list[SamplingParams], prompt: str = "Hello") -> list[Collector]:
    """Every params' sequence on one prompt, batched together; each one's steps once it ended."""
    sinks = [Collector() for _ in params]
    for p, sink in zip(params, sinks, strict=True):
        loop.submit(lm.encode(prompt), p, sink)
    return [sink.wait() for sink in sinks]


# ---- answers that follow the schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "valid"),
    [(PERSON, is_person), (COLOUR, is_colour), (FLAGS, is_flags), (COUNT, is_count)],
    ids=["object", "enum", "array", "integer"],
)
def test_sampled_answers_are_json_the_schema_accepts(
    loop: EngineLoop, lm: LoadedLM, schema: dict[str, Any], valid: Callable[[Any], bool]
) -> None:
    params = [SamplingParams(seed=seed, max_tokens=100, response_format=schema_format(schema)) for seed in SEEDS]
    for answer in run(loop, lm, params):
        assert answer.finish_reason == "stop", answer.text
        assert valid(json.loads(answer.text)), answer.text


def test_json_object_answers_are_json_objects(loop: EngineLoop, lm: LoadedLM) -> None:
    # Seeds whose answers end within max_tokens: a random model that opens a key rarely closes it (nothing bounds
    # a string here), and a cut answer cannot parse.
    fmt = json.dumps({"type": "json_object"})
    answers = run(loop, lm, [SamplingParams(seed=seed, max_tokens=100, response_format=fmt) for seed in (0, 1, 4, 5)])
    for answer in answers:
        assert answer.finish_reason == "stop", answer.text
        assert isinstance(json.loads(answer.text), dict), answer.text


def test_greedy_answers_follow_the_schema_too(loop: EngineLoop, lm: LoadedLM) -> None:
    fmt = schema_format(PERSON, strict=False)
    (answer,) = run(loop, lm, [SamplingParams(temperature=0, max_tokens=100, response_format=fmt)])
    assert answer.finish_reason == "stop" and is_person(json.loads(answer.text)), answer.text


def test_min_tokens_and_ignore_eos_end_where_the_json_ends(loop: EngineLoop, lm: LoadedLM) -> None:
    """A complete answer has no way on: the grammar ends the sequence before min_tokens, and despite ignore_eos."""
    params = [
        SamplingParams(seed=seed, max_tokens=100, response_format=schema_format(schema), **extra)
        for schema in (COLOUR, COUNT)
        for seed in range(3)
        for extra in ({"min_tokens": 60}, {"ignore_eos": True})
    ]
    answers = run(loop, lm, params)
    for p, answer in zip(params, answers, strict=True):
        assert answer.finish_reason == "stop", answer.text
        assert (is_colour if "enum" in p.response_format else is_count)(json.loads(answer.text)), answer.text


def test_a_stop_string_ends_the_json_early(loop: EngineLoop, lm: LoadedLM) -> None:
    (answer,) = run(
        loop, lm, [SamplingParams(seed=1, max_tokens=100, stop=(",",), response_format=schema_format(PERSON))]
    )
    assert answer.finish_reason == "stop"
    assert answer.text.startswith('{"name":"') and "," not in answer.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer.text)


def test_max_tokens_cuts_the_json_with_length(loop: EngineLoop, lm: LoadedLM) -> None:
    (answer,) = run(loop, lm, [SamplingParams(seed=0, max_tokens=3, response_format=schema_format(PERSON))])
    assert answer.finish_reason == "length" and answer.text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer.text)


def test_a_free_sequence_beside_a_constrained_one_is_unchanged(loop: EngineLoop, lm: LoadedLM) -> None:
    free = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    (alone,) = run(loop, lm, [free])
    beside = run(loop, lm, [free, SamplingParams(seed=0, max_tokens=40, response_format=schema_format(PERSON))])
    assert beside[0].text == alone.text


# ---- the sampler's mask --------------------------------------------------------------------------------------


class Allowing:
    """A stand-in grammar that allows a fixed set of token ids."""

    def __init__(self, *ids: int) -> None:
        self.ids = ids

    def allowed(self, vocab: int) -> torch.Tensor:
        mask = torch.zeros(vocab, dtype=torch.bool)
        mask[list(self.ids)] = True
        return mask


EOS = 3
ROW = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0])


@pytest.mark.parametrize(
    ("params", "allowed", "expected"),
    [
        (SamplingParams(temperature=0), (1, 2), 2),  # the most likely token is forbidden
        (SamplingParams(temperature=0), (EOS, 1), EOS),  # end of sequence where the grammar may end
        (SamplingParams(temperature=0, min_tokens=5), (EOS, 1), 1),  # min_tokens still holds where it can
        (SamplingParams(temperature=0, ignore_eos=True), (EOS, 0), 0),
        (SamplingParams(temperature=0, min_tokens=5), (EOS,), EOS),  # the grammar may only end: it wins
        (SamplingParams(seed=0, top_k=1), (0, 1), 1),
    ],
)
def test_the_sampler_picks_only_what_the_grammar_allows(
    params: SamplingParams, allowed: tuple[int, ...], expected: int
) -> None:
    sampler = Sampler(params, [], [EOS], grammar=Allowing(*allowed))  # type: ignore[arg-type]
    assert sampler.pick(ROW, []).token_id == expected


def test_sampling_from_a_grammar_never_leaves_it() -> None:
    sampler = Sampler(SamplingParams(seed=0), [], [EOS], grammar=Allowing(0, 3))  # type: ignore[arg-type]
    assert {sampler.pick(ROW, []).token_id for _ in range(200)} == {0, 3}


# ---- compiling, caching, refusing ----------------------------------------------------------------------------


def test_a_schema_compiles_once_and_each_sequence_gets_its_own_matcher(lm: LoadedLM) -> None:
    compiler = GrammarCompiler(lm.tokenizer, lm.eos_token_ids)
    first, second = compiler.matcher(schema_format(COLOUR)), compiler.matcher(schema_format(COLOUR))
    assert compiler.cached == 1
    vocab = len(lm.tokenizer)
    for token in lm.encode('"red"'):
        assert first.allowed(vocab)[token]
        done = first.consume(token)
    assert done
    assert second.allowed(vocab)[lm.encode('"')[0]]  # the second one has not moved
    compiler.matcher(json.dumps({"type": "json_object"}))
    assert compiler.cached == 2


def test_ids_past_the_tokenizers_vocabulary_are_never_allowed(lm: LoadedLM) -> None:
    """A model may have more logits than its tokenizer has tokens (a padded embedding)."""
    matcher = GrammarCompiler(lm.tokenizer, lm.eos_token_ids).matcher(json.dumps({"type": "json_object"}))
    vocab = len(lm.tokenizer)
    padded = matcher.allowed(vocab + 100)
    assert padded.shape == (vocab + 100,) and not padded[vocab:].any()
    assert torch.equal(padded[:vocab], matcher.allowed(vocab)) and padded[lm.encode("{")[0]]


def test_the_cache_is_bounded(lm: LoadedLM) -> None:
    compiler = GrammarCompiler(lm.tokenizer, lm.eos_token_ids, cache_size=2)
    formats = [schema_format({"const": n}) for n in range(3)]
    for fmt in formats:
        compiler.matcher(fmt)
    assert compiler.cached == 2


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "strng"}, ["strng"]),
        ({"type": "integer", "minimum": 5, "maximum": 1}, ["minimum"]),
        ({"type": "string", "pattern": "(("}, ["regex"]),
        ({"properties": {"a": {"$ref": "#/nowhere"}}}, ["nowhere"]),
        ({"type": "string", "format": "shoe-size"}, ["shoe-size"]),
    ],
)
def test_a_bad_schema_is_a_value_error_naming_the_problem(lm: LoadedLM, schema: Any, words: list[str]) -> None:
    fmt = schema_format(schema)
    for compile_it in (grammar.check, GrammarCompiler(lm.tokenizer, lm.eos_token_ids).matcher):
        with pytest.raises(ValueError, match="JSON schema") as caught:
            compile_it(fmt)
        assert all(word in str(caught.value) for word in words), caught.value


def test_the_engine_loop_refuses_a_bad_schema_with_a_400(loop: EngineLoop, lm: LoadedLM) -> None:
    params = SamplingParams(response_format=schema_format({"type": "strng"}))
    with pytest.raises(InvalidInput) as caught:
        loop.submit(lm.encode("Hello"), params, Collector())
    assert caught.value.status_code == 400 and "strng" in caught.value.message
    assert caught.value.details["param"] == "response_format"


def test_without_llguidance_a_response_format_is_refused_naming_the_pip_command(
    lm: LoadedLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llguidance", None)  # `import llguidance` raises ImportError
    fmt = json.dumps({"type": "json_object"})
    for compile_it in (grammar.check, GrammarCompiler(lm.tokenizer, lm.eos_token_ids).matcher):
        with pytest.raises(ValueError, match="pip install llguidance"):
            compile_it(fmt)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": json.loads(fmt)}
    with pytest.raises(InvalidRequest, match="pip install llguidance") as caught:
        parse_chat(body)
    assert caught.value.param == "response_format"
