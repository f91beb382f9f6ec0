"""Structured output: an OpenAI ``response_format`` compiled with llguidance into each sequence's token constraint.

``SamplingParams.response_format`` holds the JSON text of ``{"type": "json_schema", "json_schema": {"name", "schema",
"strict"}}`` or ``{"type": "json_object"}`` (any JSON object). ``check`` validates one without a tokenizer (the
request parser calls it, so a bad schema is a 400); a ``GrammarCompiler`` per loaded model compiles it for that
model's tokenizer, once per schema text, and hands each sequence its own ``GrammarMatcher``: before each pick the
tokens the grammar allows next (end of sequence only where the grammar may end), after each pick the token consumed.

The JSON is written without whitespace between tokens (``{"a":1,"b":[true]}``); whitespace the grammar would allow
is where a small model loses itself. A schema may say otherwise with llguidance's own ``"x-guidance"`` options.
llguidance is imported on first use, so a server without it runs, and only these requests are refused.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Collection
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

INSTALL = "pip install llguidance"
JSON_OPTIONS = {"whitespace_flexible": False}
"""llguidance's JSON options ferry starts from; a schema's ``x-guidance`` overrides them."""
CACHE_SIZE = 64
"""Compiled grammars a ``GrammarCompiler`` keeps, the least recently used dropped first."""
_REFUSED = "response_format holds a JSON schema that cannot be honoured"


def check(response_format: str) -> None:
    """Raise ``ValueError`` naming the problem when ``response_format`` cannot be honoured (a schema llguidance
    refuses, or llguidance not installed); no tokenizer is needed."""
    llguidance = _llguidance()
    error = llguidance.LLMatcher.validate_grammar(_grammar(llguidance, response_format))
    if error:
        raise ValueError(f"{_REFUSED}: {error}")


class GrammarMatcher:
    """One sequence's place in its grammar: the tokens it allows next, and the tokens picked so far consumed."""

    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher

    def allowed(self, vocab: int) -> torch.Tensor:
        """A bool tensor (``vocab``,) on the CPU: True where the grammar allows the token next. End of sequence is
        allowed only where the grammar may end; ids past the tokenizer's vocabulary never are."""
        import torch  # here, not at the top: ``check`` runs in the OpenAI face of a server without torch

        bits = np.unpackbits(np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = torch.from_numpy(bits.view(np.bool_))  # 0 and 1 bytes are bools: no copy
        if allowed.shape[0] >= vocab:
            return allowed[:vocab]
        return torch.cat([allowed, torch.zeros(vocab - allowed.shape[0], dtype=torch.bool)])

    def consume(self, token_id: int) -> bool:
        """Advance past the picked token. True when the sequence must end here: the grammar is complete (nothing
        but the end may follow), or the token broke it (logged: a pick the mask allowed never does)."""
        if not self._matcher.consume_token(token_id):
            log.warning("a structured-output sequence ends early: %s", self._matcher.get_error())
            return True
        return bool(self._matcher.is_stopped())


class GrammarCompiler:
    """Compiles ``response_format`` texts for one tokenizer, each once (an LRU of ``CACHE_SIZE``); thread-safe.

    llguidance's wrap of the tokenizer is made on the first compile, so a model that never sees a
    ``response_format`` never imports llguidance.
    """

    def __init__(self, tokenizer: Any, eos_token_ids: Collection[int], cache_size: int = CACHE_SIZE) -> None:
        self._tokenizer = tokenizer
        self._eos_token_ids = sorted(eos_token_ids)
        self._cache_size = cache_size
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._ll_tokenizer: Any = None
        self._lock = threading.Lock()

    def matcher(self, response_format: str) -> GrammarMatcher:
        """A fresh matcher for one sequence; ``ValueError`` naming the problem when the format cannot be compiled
        (llguidance missing, a schema it refuses, a tokenizer it cannot read)."""
        with self._lock:
            compiled = self._compiled.get(response_format)
            if compiled is None:
                compiled = self._compile(response_format)
                self._compiled[response_format] = compiled
                if len(self._compiled) > self._cache_size:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(response_format)
            return GrammarMatcher(compiled.deep_copy())

    @property
    def cached(self) -> int:
        """How many compiled grammars are kept."""
        return len(self._compiled)

    def _compile(self, response_format: str) -> Any:
        llguidance = _llguidance()
        matcher = llguidance.LLMatcher(self._wrapped(), _grammar(llguidance, response_format), log_level=0)
        if matcher.is_error():
            raise ValueError(f"{_REFUSED}: {matcher.get_error()}")
        return matcher

    def _wrapped(self) -> Any:
        if self._ll_tokenizer is None:
            import llguidance.hf

            try:
                self._ll_tokenizer = llguidance.hf.from_tokenizer(self._tokenizer, eos_token=self._eos_token_ids)
            except ValueError as exc:  # a slow (Python) tokenizer: llguidance reads only fast ones
                raise ValueError(f"response_format cannot be honoured for this model's tokenizer: {exc}") from exc
        return self._ll_tokenizer


def _grammar(llguidance: ModuleType, response_format: str) -> str:
    """llguidance's grammar text for the JSON text of a checked response_format object."""
    value = json.loads(response_format)
    schema = value["json_schema"]["schema"] if value["type"] == "json_schema" else {"type": "object"}
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise ValueError(f"{_REFUSED}: {exc}") from exc


def _llguidance() -> ModuleType:
    try:
        import llguidance
    except ImportError as exc:
        raise ValueError(
            "response_format json_schema and json_object need the llguidance package on the server: " + INSTALL
        ) from exc
    return llguidance
