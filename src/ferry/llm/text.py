"""Token ids to text one token at a time without splitting a UTF-8 character; stop strings caught across tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"
PROMPT_CONTEXT = 5
"""Prompt tokens decoded ahead of the first output token, so that its leading space survives decoding."""


class Detokenizer:
    """Incremental: token ids in, text out, never ending inside a UTF-8 character.

    Each call decodes only a short window of recent ids (vLLM's prefix/read offsets): the text of
    ``ids[prefix:read]`` was emitted already, and whatever ``ids[prefix:]`` decodes to beyond it is new. New text
    that ends in U+FFFD may be a character still incomplete, so it waits for the next token (or ``flush``).

    The output continues the prompt's text: all ``feed`` and ``flush`` results joined equal
    ``decode(prompt_ids + output_ids)`` minus ``decode(prompt_ids)``, which is ``decode(output_ids)`` for byte-level
    BPE tokenizers and for an empty prompt. A sentencepiece-style ("▁") tokenizer keeps the first output token's
    leading space, which ``decode(output_ids)`` alone would strip.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids = self._prompt_context(list(prompt_ids))
        self._prefix = 0
        self._read = len(self._ids)

    def feed(self, token_id: int) -> str:
        """The text ``token_id`` adds; "" while a character is incomplete."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is held back at the end (U+FFFD where the bytes are truly invalid)."""
        return self._advance(final=True)

    def token_text(self, token_id: int) -> str:
        """One token's own text, for log-probabilities ("\ufffd" for a token that is part of a character)."""
        text = self._tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        # sentencepiece decoders strip the leading space of a text's first token; a lone token is always first
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and piece.startswith("▁") and not text.startswith(" "):
            text = " " + text
        return text

    def _prompt_context(self, prompt_ids: list[int]) -> list[int]:
        """The prompt's last few ids, reaching back past ids that decode to nothing (skipped special tokens)."""
        size = PROMPT_CONTEXT
        while size < len(prompt_ids) and not self._decode(prompt_ids[-size:]):
            size *= 2
        context = prompt_ids[-size:]
        if self._decode(context).endswith(REPLACEMENT):
            return []  # the prompt ends inside a character: there is no text to continue
        return context

    def _advance(self, final: bool) -> str:
        done = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(done) or (text.endswith(REPLACEMENT) and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        # keep the window short: the ids before the prefix are never decoded again
        del self._ids[: self._prefix]
        self._read -= self._prefix
        self._prefix = 0
        return text[len(done) :]

    def _decode(self, ids: list[int]) -> str:
        # no clean-up of spaces before punctuation: a streamed space cannot be taken back
        return self._tokenizer.decode(
            ids, skip_special_tokens=self._skip_special_tokens, clean_up_tokenization_spaces=False
        )


class StopMatcher:
    """Catches stop strings across token boundaries; what it releases never contains (part of) a matched stop.

    The stop that matches is the one whose end comes first in the whole text (the longest, if several end at the
    same place); the released text then ends right before its start. Text is held back only while the pending
    text's longest suffix that is a proper prefix of some stop string could still grow into one.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not stop for stop in stops):
            raise ValueError("stop strings must be non-empty")
        self._stops = tuple(stops)
        self._pending = ""
        self._stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string matched: then the text ends right before it)."""
        if self._stopped:
            return "", True
        if not self._stops:
            return text, False
        pending = self._pending + text
        cut = self._first_stop_start(pending)
        if cut is not None:
            self._pending, self._stopped = "", True
            return pending[:cut], True
        held = self._held_length(pending)
        self._pending = pending[len(pending) - held :]
        return pending[: len(pending) - held], False

    def flush(self) -> str:
        """The held-back text at the end when no stop matched ("" after a match)."""
        pending, self._pending = self._pending, ""
        return pending

    def _first_stop_start(self, text: str) -> int | None:
        """Where the stop that ends first in ``text`` starts (the earliest start among those ending there)."""
        best: tuple[int, int] | None = None
        for stop in self._stops:
            start = text.find(stop)
            if start >= 0 and (best is None or (start + len(stop), start) < best):
                best = (start + len(stop), start)
        return None if best is None else best[1]

    def _held_length(self, text: str) -> int:
        """The length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
        longest = max(len(stop) for stop in self._stops) - 1
        for length in range(min(longest, len(text)), 0, -1):
            suffix = text[-length:]
            if any(len(stop) > length and stop.startswith(suffix) for stop in self._stops):
                return length
        return 0
