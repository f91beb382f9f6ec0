"""Scheduler: which sequences compute which tokens in the next step, within the KV budget and a token budget.

Every sequence is a list of tokens (its prompt, then what it generated) of which the first ``computed`` have their
keys and values in the cache. A step computes some of the rest: one token for a decoding sequence, a chunk of its
prompt for a prefilling one. The policy, per step:

1. Decoding sequences first, oldest first, one token each. One that needs a new block and finds none preempts the
   newest running sequence (its blocks are released; it goes back to the head of the queue and recomputes its
   tokens when it is admitted again, from the prefix cache where its blocks are still there), as vLLM does.
2. Then sequences part-way through their prompt, oldest first, a chunk each while the step's prefill budget lasts.
3. Then waiting sequences, first come first served, while fewer than ``max_num_seqs`` run and the budget lasts.
   Admission takes the cached blocks of the prompt's longest known prefix and reserves blocks for the rest of
   the prompt, so a prefill never runs out of blocks; when they are not free the queue waits (nobody overtakes).

The step's prefill budget is ``max_num_batched_tokens`` when nothing decodes (unless chunked prefill is off: then
every prompt is prefilled whole in the step that admits it). While sequences decode, it gives each sequence
waiting for its first token a chunk that takes about as long as a plain decoding step
(``ChunkSizer``, measured as the loop runs): a long prompt arriving among running streams costs each of them a
bounded delay per token, never a stall, and a burst of new prompts still gets through in a few steps.
Not thread-safe: one engine loop owns it.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ferry.llm.blocks import ROOT, BlockPool


class KVSeq:
    """A sequence as the scheduler sees it: its tokens and the blocks that hold the computed ones."""

    def __init__(self, seq_id: int, tokens: Sequence[int]) -> None:
        self.id = seq_id
        self.tokens = list(tokens)
        """The prompt, then every token generated so far (the last one picked is not computed yet)."""
        self.computed = 0
        """Leading tokens whose keys and values are in the sequence's blocks."""
        self.blocks: list[int] = []
        self.keys: list[int] = []
        """The prefix cache's key of each of the sequence's full, computed blocks."""


@dataclass(frozen=True)
class Scheduled:
    """``count`` tokens of ``seq`` to compute this step, from ``seq.computed`` on."""

    seq: KVSeq
    count: int

    @property
    def decode(self) -> bool:
        return self.count == 1 and self.seq.computed > 0

    @property
    def completes(self) -> bool:
        """Whether the step computes the sequence's last known token (its next token is picked after it)."""
        return self.seq.computed + self.count == len(self.seq.tokens)


class ChunkSizer:
    """The prefill chunk one sequence may get in a step while others decode: as many tokens as take about as long
    as a plain decoding step, from running averages of both (so it follows the model, the device and the load)."""

    def __init__(self, ceiling: int, floor: int = 16, start: int = 64) -> None:
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self._start = min(start, ceiling)
        self._decode_s: float | None = None
        self._token_s: float | None = None

    def limit(self) -> int:
        if self._decode_s is None or self._token_s is None:
            return self._start
        return max(self.floor, min(self.ceiling, int(self._decode_s / self._token_s)))

    def observe(self, seconds: float, decodes: int, prefill_tokens: int) -> None:
        """A step's duration with how many decodes and prefill tokens it carried."""
        if prefill_tokens == 0 and decodes:
            self._decode_s = _ema(self._decode_s, seconds)
        elif prefill_tokens >= self.floor:
            base = self._decode_s if decodes and self._decode_s is not None else 0.0
            self._token_s = _ema(self._token_s, max(seconds - base, 1e-9) / prefill_tokens)


def _ema(old: float | None, new: float, weight: float = 0.2) -> float:
    return new if old is None else old + weight * (new - old)


class Scheduler:
    """The waiting queue, the running sequences (oldest first) and the blocks they hold."""

    def __init__(self, pool: BlockPool, max_num_seqs: int, max_num_batched_tokens: int, chunked: bool = True) -> None:
        """``chunked`` False: every prompt is prefilled whole in the step that admits it (a comparison point)."""
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({max_num_batched_tokens}) must be at least max_num_seqs ({max_num_seqs}): "
                "every running sequence decodes a token each step"
            )
        self.pool = pool
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked = chunked
        self.chunks = ChunkSizer(max_num_batched_tokens)
        self.waiting: deque[KVSeq] = deque()
        self.running: list[KVSeq] = []
        self.preemptions = 0
        self.prefix_queries = 0
        """Prompt tokens looked up in the prefix cache at admission."""
        self.prefix_hits = 0
        """Of those, the tokens whose keys and values were found there."""

    def add(self, seq: KVSeq) -> None:
        self.waiting.append(seq)

    def schedule(self) -> list[Scheduled]:
        """The next step: decodes first, then prefill chunks, each token of a sequence backed by a block."""
        plan = self._decodes()
        budget, cap = self._prefill_budget(decodes=len(plan))
        planned = {id(item.seq) for item in plan}
        for seq in self.running:
            if budget > 0 and id(seq) not in planned:
                plan.append(Scheduled(seq, min(len(seq.tokens) - seq.computed, budget, cap)))
                budget -= plan[-1].count
        while budget > 0 and self.waiting and len(self.running) < self.max_num_seqs and self._admit(self.waiting[0]):
            seq = self.waiting.popleft()
            self.running.append(seq)
            plan.append(Scheduled(seq, min(len(seq.tokens) - seq.computed, budget, cap)))
            budget -= plan[-1].count
        return plan

    def _decodes(self) -> list[Scheduled]:
        """A token for each decoding sequence, oldest first, each given the block it needs (preempting if so)."""
        plan = []
        for seq in [s for s in self.running if len(s.tokens) - s.computed == 1 and s.computed > 0]:
            if seq in self.running and self._grow(seq):
                plan.append(Scheduled(seq, 1))
        return [item for item in plan if item.seq in self.running]  # a later grow may have preempted it

    def _prefill_budget(self, decodes: int) -> tuple[int, int]:
        """Prefill tokens this step, and at most how many for one sequence. When nothing decodes: all the step may
        carry. Else a chunk (``ChunkSizer``) for each sequence waiting for its first token (being prefilled, or
        admissible now): a burst of new prompts is not served one chunk a step while a few streams decode, and
        one long prompt costs the streams little."""
        if not self.chunked:
            return sys.maxsize, sys.maxsize
        budget = self.max_num_batched_tokens - decodes
        if not decodes:
            return budget, budget
        chunk = self.chunks.limit()
        prefilling = len(self.running) - decodes + min(len(self.waiting), self.max_num_seqs - len(self.running))
        return min(budget, chunk * max(1, prefilling)), chunk

    def computed(self, item: Scheduled) -> None:
        """The step ran: ``item``'s tokens are in the cache; its newly full blocks join the prefix cache."""
        seq, bs = item.seq, self.pool.block_size
        seq.computed += item.count
        for index in range(len(seq.keys), seq.computed // bs):
            previous = seq.keys[-1] if seq.keys else ROOT
            seq.keys.append(self.pool.register(seq.blocks[index], previous, seq.tokens[index * bs : (index + 1) * bs]))

    def finish(self, seq: KVSeq) -> None:
        """The sequence ended (or its client left): out of the queue or the batch, its blocks given back."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks, seq.keys = [], []

    def _grow(self, seq: KVSeq) -> bool:
        """Give ``seq`` the block its next token needs, preempting the newest sequences while none is free.
        False when ``seq`` itself was the newest and got preempted."""
        need = self.pool.blocks_for(len(seq.tokens)) - len(seq.blocks)
        while need > 0:
            fresh = self.pool.allocate(need)
            if fresh is not None:
                seq.blocks += fresh
                return True
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: KVSeq) -> None:
        self.running.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks, seq.keys, seq.computed = [], [], 0
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def _admit(self, seq: KVSeq) -> bool:
        """Take the cached prefix of ``seq``'s tokens and reserve blocks for the rest; False when too few are free."""
        tokens = seq.tokens
        blocks, keys = self.pool.match(tokens, limit=len(tokens) - 1)  # the last token is computed for its logits
        fresh = self.pool.allocate(self.pool.blocks_for(len(tokens)) - len(blocks))
        if fresh is None:
            self.pool.release(blocks)
            return False
        seq.blocks, seq.keys, seq.computed = blocks + fresh, keys, len(blocks) * self.pool.block_size
        self.prefix_queries += len(tokens)
        self.prefix_hits += seq.computed
        return True
