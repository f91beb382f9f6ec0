"""Streaming detokenization against whole decodes, and stop strings caught across chunk boundaries."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ferry.llm.text import Detokenizer, StopMatcher
from tests.budget import examples

CORPUS = [
    "Hello world, café déjà vu, über Grüße aus München.",
    "日本語のテキストです。東京と大阪。",
    "Launch the 🚀 now! 🚀🚀 rockets and 🎉 party",
    "The quick brown fox jumps over the lazy dog; naïve façade.",
] * 3


@pytest.fixture(scope="module")
def byte_level() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style) small enough that multibyte characters span several tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def metaspace() -> PreTrainedTokenizerFast:
    """A sentencepiece-style BPE: words begin with "▁", and decoding strips the first token's leading space."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>")


def stream(tokenizer: Any, prompt: list[int], output: list[int], skip: bool = True) -> tuple[list[str], str]:
    """The pieces feed() returned, one per token, and what flush() returned."""
    detokenizer = Detokenizer(tokenizer, prompt, skip_special_tokens=skip)
    return [detokenizer.feed(token_id) for token_id in output], detokenizer.flush()


def ids(tokenizer: Any, max_size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(tokenizer) - 1), max_size=max_size)


def test_multibyte_characters_come_out_whole(byte_level: PreTrainedTokenizerFast) -> None:
    text = "日本語 🚀 café über"
    output = byte_level.encode(text)
    assert any("\ufffd" in byte_level.decode([token_id]) for token_id in output), "no token splits a character"
    pieces, rest = stream(byte_level, [], output)
    assert "".join(pieces) + rest == text
    assert rest == ""
    assert "" in pieces  # held while a character was incomplete
    assert not any("\ufffd" in piece for piece in pieces)


def test_invalid_bytes_at_the_end_come_out_on_flush(byte_level: PreTrainedTokenizerFast) -> None:
    lead_byte = byte_level.convert_tokens_to_ids("æ")  # 0xE6 in GPT-2's byte-to-character map
    output = byte_level.encode("ok ") + [lead_byte]
    pieces, rest = stream(byte_level, [], output)
    assert "".join(pieces) == "ok "
    assert rest == "\ufffd" == byte_level.decode([lead_byte])


def test_prompt_ending_inside_a_character_does_not_swallow_the_output(byte_level: PreTrainedTokenizerFast) -> None:
    split = byte_level.encode("日本語")
    prompt, output = split[:1], split[1:]
    assert byte_level.decode(prompt).endswith("\ufffd")
    pieces, rest = stream(byte_level, prompt, output)
    assert "".join(pieces) + rest == byte_level.decode(output) != ""


@settings(max_examples=examples(60), deadline=None)
@given(data=st.data(), skip=st.booleans())
def test_byte_level_stream_equals_whole_decode(byte_level: PreTrainedTokenizerFast, data: Any, skip: bool) -> None:
    prompt = data.draw(ids(byte_level, 12), label="prompt")
    output = data.draw(ids(byte_level, 40), label="output")
    pieces, rest = stream(byte_level, prompt, output, skip)
    assert "".join(pieces) + rest == byte_level.decode(output, skip_special_tokens=skip)
    assert not any(piece.endswith("\ufffd") for piece in pieces)


@settings(max_examples=examples(60), deadline=None)
@given(data=st.data())
def test_byte_level_stream_of_real_text_has_no_replacement_characters(
    byte_level: PreTrainedTokenizerFast, data: Any
) -> None:
    text = data.draw(st.text(alphabet=st.sampled_from("aé日本語🚀ü x."), max_size=30), label="text")
    pieces, rest = stream(byte_level, byte_level.encode("Hi"), byte_level.encode(text))
    assert "".join(pieces) == text
    assert rest == ""
    assert not any("\ufffd" in piece for piece in pieces)


@settings(max_examples=examples(60), deadline=None)
@given(data=st.data(), skip=st.booleans())
def test_metaspace_stream_continues_the_prompt(metaspace: PreTrainedTokenizerFast, data: Any, skip: bool) -> None:
    prompt = data.draw(ids(metaspace, 12), label="prompt")
    output = data.draw(ids(metaspace, 30), label="output")
    pieces, rest = stream(metaspace, prompt, output, skip)
    whole = metaspace.decode(prompt + output, skip_special_tokens=skip)
    prompt_text = metaspace.decode(prompt, skip_special_tokens=skip)
    assert whole.startswith(prompt_text)
    assert "".join(pieces) + rest == whole[len(prompt_text) :]
    if not prompt:
        assert "".join(pieces) + rest == metaspace.decode(output, skip_special_tokens=skip)


def test_metaspace_keeps_the_first_tokens_space_after_a_prompt(metaspace: PreTrainedTokenizerFast) -> None:
    prompt, output = metaspace.encode("Hello"), metaspace.encode("world")
    assert metaspace.convert_ids_to_tokens(output)[0].startswith("▁")
    assert "".join(stream(metaspace, prompt, output)[0]) == " world"
    assert "".join(stream(metaspace, [], output)[0]) == "world" == metaspace.decode(output)


def test_prompt_of_special_tokens_only_at_its_end_still_gives_context(metaspace: PreTrainedTokenizerFast) -> None:
    prompt = metaspace.encode("Hello") + [metaspace.eos_token_id] * 12
    assert "".join(stream(metaspace, prompt, metaspace.encode("world"))[0]) == " world"


class CountingTokenizer:
    """Wraps a tokenizer and records how many ids each decode call got."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.sizes: list[int] = []

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        self.sizes.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def test_each_token_decodes_a_short_window(byte_level: PreTrainedTokenizerFast) -> None:
    counting = CountingTokenizer(byte_level)
    output = byte_level.encode(" ".join(CORPUS))
    assert len(output) > 100
    pieces, rest = stream(counting, byte_level.encode("Hi there"), output)
    assert "".join(pieces) + rest == byte_level.decode(output)
    assert max(counting.sizes) <= 12


def test_token_text(byte_level: PreTrainedTokenizerFast, metaspace: PreTrainedTokenizerFast) -> None:
    detokenizer = Detokenizer(byte_level, [])
    assert detokenizer.token_text(byte_level.convert_tokens_to_ids("ĠcafÃ©")) == " café"
    assert detokenizer.token_text(byte_level.convert_tokens_to_ids("æ")) == "\ufffd"
    assert detokenizer.token_text(byte_level.eos_token_id) == "<|endoftext|>"
    sentencepiece = Detokenizer(metaspace, [])
    assert sentencepiece.token_text(metaspace.convert_tokens_to_ids("▁Hello")) == " Hello"
    assert sentencepiece.token_text(metaspace.convert_tokens_to_ids("l")) == "l"


# StopMatcher


def cut_at_first_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The reference: scan end positions left to right; the first stop to complete (the longest, if several
    complete at the same position) cuts the text at its start."""
    for end in range(1, len(text) + 1):
        ending = [stop for stop in stops if text[:end].endswith(stop)]
        if ending:
            return text[: end - max(len(stop) for stop in ending)], True
    return text, False


def run_matcher(stops: list[str], chunks: list[str]) -> tuple[list[str], bool, str]:
    """What feed() released per chunk, whether a stop matched, and what flush() released."""
    matcher = StopMatcher(stops)
    released, stopped = [], False
    for chunk in chunks:
        text, matched = matcher.feed(chunk)
        assert not (stopped and (text or not matched)), "released text after a stop matched"
        released.append(text)
        stopped = stopped or matched
    return released, stopped, matcher.flush()


def chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(cut, len(text)) for cut in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


ALPHABET = "abcé日 "


@settings(max_examples=examples(60), deadline=None)
@given(
    text=st.text(alphabet=ALPHABET, max_size=40),
    stops=st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), max_size=4),
    cuts=st.lists(st.integers(0, 40), max_size=12),
)
def test_stop_matcher_cuts_before_the_first_completed_stop(text: str, stops: list[str], cuts: list[int]) -> None:
    expected, should_stop = cut_at_first_stop(text, stops)
    released, stopped, rest = run_matcher(stops, chunked(text, cuts))
    assert stopped == should_stop
    assert "".join(released) + rest == expected
    if stopped:
        assert rest == ""
    emitted = ""
    for piece in released:  # never released anything a later stop would have cut
        emitted += piece
        assert expected.startswith(emitted)


def test_stop_across_chunks() -> None:
    released, stopped, rest = run_matcher(["STOP"], ["hello S", "T", "OP and more"])
    assert released == ["hello ", "", ""]
    assert stopped
    assert rest == ""


def test_holds_back_only_a_possible_stop_prefix() -> None:
    matcher = StopMatcher(["cd", "xyz"])
    assert matcher.feed("abc") == ("ab", False)
    assert matcher.feed("e x") == ("ce ", False)
    assert matcher.feed("yq") == ("xyq", False)
    assert matcher.feed("xy") == ("", False)
    assert matcher.flush() == "xy"


def test_earliest_ending_stop_wins_over_earlier_starting_one() -> None:
    assert run_matcher(["abcd", "bc"], ["xabcd"]) == (["xa"], True, "")
    assert run_matcher(["abc", "bc"], ["xabc"]) == (["x"], True, "")


def test_without_stops_text_passes_through_at_once() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("any text, even a partial s") == ("any text, even a partial s", False)
    assert matcher.flush() == ""
