"""BlockPool: the KV cache's fixed-size blocks, who holds them, and the prefix cache over them.

A sequence holds a list of blocks (its block table); block ``i`` holds its tokens ``i * block_size`` to
``(i + 1) * block_size - 1``. A block filled by a sequence is registered under a key naming its whole prefix: the
key of the block before it and the block's own tokens. Keys are exact (an id handed out per distinct
(previous key, tokens) pair, never a hash that two prefixes could share), so a cached block is only ever reused
for the very tokens it was computed for.

When its last holder releases it, a registered block stays cached (least recently released first out) and a later
prompt with the same prefix takes it again instead of recomputing it; an unregistered block goes back to the free
list. A fresh block comes from the free list first, then by evicting the least recently released cached block.
Shared blocks are only ever full prefix blocks, which nobody writes again, so sharing needs no copy.
Not thread-safe: one engine loop owns it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

ROOT = -1
"""The key before a sequence's first block."""


class BlockPool:
    """``num_blocks`` blocks of ``block_size`` tokens, reference-counted, with an LRU prefix cache."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"a block pool needs at least one block of one token, not {num_blocks} x {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._free: deque[int] = deque(range(num_blocks))
        """Blocks holding nothing reusable, lowest first (so memory is touched from the start of the pool)."""
        self._refs = [0] * num_blocks
        self._cached: OrderedDict[int, None] = OrderedDict()
        """Registered blocks nobody holds, least recently released first: taken again on a prefix hit, evicted
        when the free list is empty."""
        self._key_of: dict[int, int] = {}
        """Registered block -> its key."""
        self._keys: dict[tuple[int, tuple[int, ...]], int] = {}
        """(previous key, the block's tokens) -> key; the key's block is ``_block_of[key]``."""
        self._block_of: dict[int, int] = {}
        self._name_of: dict[int, tuple[int, tuple[int, ...]]] = {}
        self._next_key = 0

    # counts ------------------------------------------------------------------------------------------

    @property
    def available(self) -> int:
        """Blocks a sequence could get now: free ones and cached ones nobody holds."""
        return len(self._free) + len(self._cached)

    @property
    def used(self) -> int:
        """Blocks some sequence holds."""
        return self.num_blocks - self.available

    @property
    def cached(self) -> int:
        """Registered blocks nobody holds (kept for prefix hits, evicted first when blocks run out)."""
        return len(self._cached)

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold ``tokens`` tokens."""
        return -(-tokens // self.block_size)

    # taking and giving back ------------------------------------------------------------------------------

    def match(self, tokens: Sequence[int], limit: int) -> tuple[list[int], list[int]]:
        """The cached blocks holding the longest prefix of ``tokens`` (at most ``limit`` tokens, whole blocks),
        taken by the caller, and their keys."""
        blocks: list[int] = []
        keys: list[int] = []
        if self.prefix_caching:
            bs, key = self.block_size, ROOT
            for start in range(0, limit - bs + 1, bs):
                found = self._keys.get((key, tuple(tokens[start : start + bs])))
                if found is None:
                    break
                key = found
                block = self._block_of[key]
                self._take(block)
                blocks.append(block)
                keys.append(key)
        return blocks, keys

    def allocate(self, count: int) -> list[int] | None:
        """``count`` fresh blocks for the caller, or None (and nothing taken) when fewer are available."""
        if count > self.available:
            return None
        blocks = []
        for _ in range(count):
            if self._free:
                block = self._free.popleft()
            else:
                block, _ = self._cached.popitem(last=False)
                self._forget(block)
            self._refs[block] = 1
            blocks.append(block)
        return blocks

    def release(self, blocks: Sequence[int]) -> None:
        """Give ``blocks`` back (a sequence ended or was preempted). The last ones go first into the cache's
        eviction order, so a prefix's first blocks, the ones other prompts share most, are evicted last."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] > 0:
                continue
            if block in self._key_of:
                self._cached[block] = None
            else:
                self._free.append(block)

    def register(self, block: int, previous: int, tokens: Sequence[int]) -> int:
        """Record that full ``block`` holds ``tokens`` after the prefix keyed ``previous``; returns its key.

        Where another block holds that prefix already (two sequences computed it side by side), that block's key
        is returned and ``block`` stays unregistered."""
        if len(tokens) != self.block_size:
            raise ValueError(f"only full blocks are cached: {len(tokens)} tokens, block size {self.block_size}")
        name = (previous, tuple(tokens))
        key = self._keys.get(name)
        if key is not None:
            return key
        key = self._next_key
        self._next_key += 1
        if self.prefix_caching:
            self._keys[name] = key
            self._name_of[key] = name
            self._block_of[key] = block
            self._key_of[block] = key
        return key

    def _take(self, block: int) -> None:
        if self._refs[block] == 0:
            del self._cached[block]
        self._refs[block] += 1

    def _forget(self, block: int) -> None:
        """An evicted block's key no longer names it (its prefix must be computed again)."""
        key = self._key_of.pop(block)
        del self._block_of[key]
        del self._keys[self._name_of.pop(key)]
