"""What a generation request asks for and what one decoding step gives back: the types every llm module shares."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens and when it ends. Defaults mean "off" (plain sampling at 1.0)."""

    max_tokens: int | None = None
    """New tokens at most; None: until end of sequence or the context limit."""
    min_tokens: int = 0
    """End of sequence and stop strings are ignored until this many tokens were generated."""
    temperature: float = 1.0
    """0: greedy (argmax)."""
    top_p: float = 1.0
    top_k: int = 0
    """0: off (vLLM's -1 is mapped to 0 by the request parser)."""
    min_p: float = 0.0
    seed: int | None = None
    """The same seed gives the same tokens for the same request run alone."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    """None: no log-probabilities; 0: the chosen token's; k (1..20): the chosen token's and the top k."""
    response_format: str | None = None
    """The JSON text of a ``json_schema`` or ``json_object`` response_format: tokens follow its grammar
    (``llm/grammar.py``) and the sequence ends with "stop" where the grammar is complete. None: free text."""


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability (under the model's distribution) and its top alternatives."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass
class Step:
    """What one sequence gained in one decoding step (or several, when a client reads slower than it decodes).

    ``text`` never ends inside a UTF-8 character and never holds any part of a matched stop string; text held
    back because it may begin a stop string comes in a later step (or the last one).
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    """None while running; then "stop" (end of sequence or a stop string), "length" or "abort"."""
    prompt_tokens: int = 0
    """The sequence's prompt length (for usage); set on every step."""
    completion_tokens: int = 0
    """Tokens generated so far, this step's included (for usage)."""
