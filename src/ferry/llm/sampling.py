"""One sequence's next token from its row of logits: penalties, EOS rules, a grammar, temperature, top-k/p, min-p,
seed."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from ferry.llm.grammar import GrammarMatcher
from ferry.llm.params import SamplingParams

MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 4

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Pick:
    """The token a sequence picked, with log-probabilities under the model's raw distribution when asked for."""

    token_id: int
    logprob: float | None
    """The chosen token's log-probability (log_softmax of the raw logits); None when params.logprobs is None."""
    top: tuple[tuple[int, float], ...] = ()
    """(token_id, logprob) of the params.logprobs most likely tokens of the raw distribution, most likely first."""


class Sampler:
    """Picks one sequence's tokens, one call per decoding step, honouring its ``SamplingParams``.

    Processing order (as vLLM and Hugging Face do): repetition penalty (prompt and output tokens), frequency and
    presence penalties (output tokens), min_tokens and ignore_eos masks, the grammar's mask (a ``response_format``),
    then greedy argmax at temperature 0, or temperature, top-k, top-p, min-p and a draw from the sequence's own
    seeded generator. ``output_ids`` must only grow by appending between calls (it usually ends with the previous
    pick); the penalty counts are kept incrementally and recounted only when it got shorter. ``grammar`` is only
    read here: the engine loop consumes each pick.
    """

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: Sequence[int],
        eos_token_ids: Collection[int],
        grammar: GrammarMatcher | None = None,
    ) -> None:
        self.params = params
        self.grammar = grammar
        self._prompt_ids = list(prompt_ids)
        self._eos_ids = sorted(set(eos_token_ids))
        self._min_tokens_ids = sorted(set(self._eos_ids) | set(params.stop_token_ids))
        self._uses_repetition = params.repetition_penalty != 1.0
        self._uses_counts = params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
        self._seen: torch.Tensor | None = None  # bool (vocab,): in prompt or output, for the repetition penalty
        self._counts: torch.Tensor | None = None  # (vocab,): occurrences in the output, for the other penalties
        self._counted = 0  # how many of output_ids the state above holds
        self._generator: torch.Generator | None = None
        self._blocked_ids: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def pick(self, logits: torch.Tensor, output_ids: Sequence[int]) -> Pick:
        """The next token from ``logits`` (1-D, vocab) given the tokens ``output_ids`` generated so far."""
        if logits.dim() != 1:
            raise ValueError(f"logits must be one row of shape (vocab,), got shape {tuple(logits.shape)}")
        scores = self._penalized(logits, output_ids)
        if self.grammar is None:
            scores = self._masked(scores, len(output_ids))
        else:
            scores = self._constrained(scores, len(output_ids), self.grammar)
        greedy = self.params.temperature == 0.0
        token_id = int(torch.argmax(scores)) if greedy else self._sample(_upcast(scores))
        return self._with_logprobs(token_id, logits)

    def _penalized(self, logits: torch.Tensor, output_ids: Sequence[int]) -> torch.Tensor:
        """Repetition, frequency and presence penalties; the row itself (not a copy) when none is set."""
        if not (self._uses_repetition or self._uses_counts):
            return logits
        self._track(output_ids, logits)
        scores = _upcast(logits)
        if self._seen is not None:
            penalty = self.params.repetition_penalty
            penalized = torch.where(scores > 0, scores / penalty, scores * penalty)
            scores = torch.where(self._seen, penalized, scores)
        if self._counts is not None:
            counts = self._counts.to(scores.dtype)
            present = (counts > 0).to(scores.dtype)
            scores = scores - (self.params.frequency_penalty * counts + self.params.presence_penalty * present)
        return scores

    def _track(self, output_ids: Sequence[int], logits: torch.Tensor) -> None:
        """Bring the penalty state up to ``output_ids``, counting only the tokens added since the last call."""
        vocab, device = logits.shape[0], logits.device
        if self._counted > len(output_ids) or (self._seen is None and self._counts is None):
            self._counted = 0
            self._seen = self._new_seen(vocab, device) if self._uses_repetition else None
            self._counts = torch.zeros(vocab, dtype=torch.int64, device=device) if self._uses_counts else None
        new = _in_vocab(output_ids[self._counted :], vocab, device)
        self._counted = len(output_ids)
        if new.numel() == 0:
            return
        if self._seen is not None:
            self._seen[new] = True
        if self._counts is not None:
            self._counts.index_add_(0, new, torch.ones_like(new))

    def _new_seen(self, vocab: int, device: torch.device) -> torch.Tensor:
        seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        seen[_in_vocab(self._prompt_ids, vocab, device)] = True
        return seen

    def _blocked(self, generated: int) -> list[int]:
        """EOS while ignore_eos; EOS and stop_token_ids before min_tokens tokens were generated."""
        if generated < self.params.min_tokens:
            return self._min_tokens_ids
        return self._eos_ids if self.params.ignore_eos else []

    def _masked(self, scores: torch.Tensor, generated: int) -> torch.Tensor:
        """-inf for the blocked ids (``_blocked``)."""
        blocked = self._blocked(generated)
        if not blocked:
            return scores
        key = (id(blocked), scores.shape[0], scores.device)
        ids = self._blocked_ids.get(key)
        if ids is None:  # one of two lists, the same every step: made into a tensor once
            ids = self._blocked_ids[key] = _in_vocab(blocked, scores.shape[0], scores.device)
        if ids.numel() == 0:
            return scores
        return scores.index_fill(0, ids, -math.inf)

    def _constrained(self, scores: torch.Tensor, generated: int, grammar: GrammarMatcher) -> torch.Tensor:
        """-inf wherever the grammar forbids the token, and for the blocked ids unless the grammar allows only them:
        a grammar that may only end wins over min_tokens and ignore_eos (the answer stays valid)."""
        vocab = scores.shape[0]
        allowed = grammar.allowed(vocab)  # on the CPU, so that deciding needs no device sync
        blocked = _in_vocab(self._blocked(generated), vocab, allowed.device)
        if blocked.numel():
            narrowed = allowed.index_fill(0, blocked, False)
            if bool(narrowed.any()):
                allowed = narrowed
        if not bool(allowed.any()):
            return scores  # a broken grammar allows nothing: the loop ends the sequence once it consumes the pick
        return scores.masked_fill(~allowed.to(scores.device), -math.inf)

    def _sample(self, scores: torch.Tensor) -> int:
        """Temperature, top-k, top-p and min-p, then one draw from the sequence's generator."""
        scores = scores / self.params.temperature
        scores = self._top_k_top_p(scores)
        if self.params.min_p > 0.0:
            # prob < min_p * max_prob  <=>  logit < max_logit + log(min_p): no softmax needed
            floor = scores.max() + math.log(self.params.min_p)
            scores = scores.masked_fill(scores < floor, -math.inf)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator_on(scores.device)))

    def _top_k_top_p(self, scores: torch.Tensor) -> torch.Tensor:
        """Keep the top_k most likely tokens, then the smallest most-likely set whose mass reaches top_p."""
        vocab = scores.shape[0]
        top_k = self.params.top_k if 0 < self.params.top_k < vocab else 0
        if top_k == 0 and self.params.top_p >= 1.0:
            return scores
        ordered, order = torch.sort(scores, descending=True, stable=True)
        drop = torch.zeros(vocab, dtype=torch.bool, device=scores.device)
        if top_k:
            drop[top_k:] = True
            ordered = ordered.masked_fill(drop, -math.inf)
        if self.params.top_p < 1.0:
            probs = torch.softmax(ordered, dim=-1)
            mass_before = torch.cumsum(probs, dim=-1) - probs
            drop |= mass_before >= self.params.top_p
            drop[0] = False  # always at least the most likely token
        dropped = torch.empty_like(drop).scatter_(0, order, drop)  # back to vocab order, without a device sync
        return scores.masked_fill(dropped, -math.inf)

    def _generator_on(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            generator = torch.Generator(device=device)
            if self.params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.params.seed & 0xFFFF_FFFF_FFFF_FFFF)
            self._generator = generator
        return self._generator

    def _with_logprobs(self, token_id: int, logits: torch.Tensor) -> Pick:
        if self.params.logprobs is None:
            return Pick(token_id, None)
        logprobs = torch.log_softmax(_upcast(logits), dim=-1)
        top: tuple[tuple[int, float], ...] = ()
        k = min(self.params.logprobs, logprobs.shape[0])
        if k > 0:
            values, ids = torch.topk(logprobs, k)
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        return Pick(token_id, float(logprobs[token_id]), top)


def check(params: SamplingParams) -> None:
    """Raise ``ValueError`` naming the field and its valid range when ``params`` asks for something invalid."""
    _in_range("temperature", params.temperature, 0.0, 2.0, "[0, 2]")
    _in_range("top_p", params.top_p, 0.0, 1.0, "(0, 1]", low_open=True)
    _at_least("top_k", params.top_k, 0)
    _in_range("min_p", params.min_p, 0.0, 1.0, "[0, 1]")
    _in_range("presence_penalty", params.presence_penalty, -2.0, 2.0, "[-2, 2]")
    _in_range("frequency_penalty", params.frequency_penalty, -2.0, 2.0, "[-2, 2]")
    _in_range("repetition_penalty", params.repetition_penalty, 0.0, 2.0, "(0, 2]", low_open=True)
    if params.max_tokens is not None:
        _at_least("max_tokens", params.max_tokens, 1)
    _at_least("min_tokens", params.min_tokens, 0)
    if params.max_tokens is not None and params.min_tokens > params.max_tokens:
        raise ValueError(
            f"min_tokens must be <= max_tokens ({params.max_tokens}) when both are set, got {params.min_tokens}"
        )
    if params.logprobs is not None and not 0 <= params.logprobs <= MAX_LOGPROBS:
        raise ValueError(f"logprobs must be null or an integer in [0, {MAX_LOGPROBS}], got {params.logprobs}")
    _check_stop(params.stop)


def _in_range(name: str, value: float, low: float, high: float, shown: str, *, low_open: bool = False) -> None:
    above_low = value > low if low_open else value >= low
    if not (above_low and value <= high):  # written so that NaN fails too
        raise ValueError(f"{name} must be in {shown}, got {value}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")


def _check_stop(stop: Sequence[str]) -> None:
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"stop must hold at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
    if any(not s for s in stop):
        raise ValueError("stop strings must be non-empty")


def _upcast(scores: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision rows (float32 and float64 stay as they are)."""
    return scores.float() if scores.dtype in _LOW_PRECISION else scores


def _in_vocab(ids: Sequence[int], vocab: int, device: torch.device) -> torch.Tensor:
    """``ids`` as an int64 tensor on ``device``, without ids the logits row has no entry for."""
    return torch.tensor([i for i in ids if 0 <= i < vocab], dtype=torch.int64, device=device)
