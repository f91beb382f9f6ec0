"""BlockPool: a cached block is only ever handed out for the exact prefix it was computed for, blocks are never
held twice or lost, and eviction takes the least recently released first."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.llm.blocks import ROOT, BlockPool
from tests.budget import examples


def compute(pool: BlockPool, tokens: list[int], written: dict[int, tuple[int, ...]]) -> tuple[list[int], int]:
    """What a sequence does: take its cached prefix, allocate the rest, "compute" (record what each block holds),
    register its full blocks. Returns its blocks and how many tokens came from the cache (None: no room)."""
    bs = pool.block_size
    blocks, keys = pool.match(tokens, limit=len(tokens) - 1)
    for i, block in enumerate(blocks):  # a hit holds exactly these tokens
        assert written[block] == tuple(tokens[i * bs : (i + 1) * bs])
    fresh = pool.allocate(pool.blocks_for(len(tokens)) - len(blocks))
    if fresh is None:
        pool.release(blocks)
        return [], -1
    hit = len(blocks) * bs
    blocks += fresh
    for i in range(len(keys), len(tokens) // bs):
        content = tuple(tokens[i * bs : (i + 1) * bs])
        if i * bs >= hit:
            written[blocks[i]] = content
        keys.append(pool.register(blocks[i], keys[-1] if keys else ROOT, content))
    return blocks, hit


@settings(max_examples=examples(60), deadline=None)
@given(
    prompts=st.lists(
        st.tuples(st.sampled_from([(), (1, 2, 3, 4, 5, 6, 7), (1, 2, 3, 9)]), st.lists(st.integers(0, 5), max_size=9)),
        min_size=1,
        max_size=30,
    ),
    block_size=st.sampled_from([1, 2, 4]),
    num_blocks=st.integers(4, 24),
    hold=st.integers(0, 3),
)
def test_hits_are_exact_and_no_block_is_held_twice_or_lost(
    prompts: list[tuple[tuple[int, ...], list[int]]], block_size: int, num_blocks: int, hold: int
) -> None:
    pool = BlockPool(num_blocks, block_size)
    written: dict[int, tuple[int, ...]] = {}
    held: list[list[int]] = []
    for prefix, suffix in prompts:
        tokens = [*prefix, *suffix] or [0]
        blocks, hit = compute(pool, tokens, written)
        if hit >= 0:
            assert hit <= len(tokens) - 1 and hit % block_size == 0
            held.append(blocks)
        if len(held) > hold:
            pool.release(held.pop(0))
        holding = [b for blocks in held for b in blocks]
        shared = {b for b in holding if holding.count(b) > 1}
        for b in shared:  # only full, registered prefix blocks are shared
            assert b in pool._key_of
        assert pool.used == len(set(holding))
        assert pool.used + pool.available == num_blocks
    for blocks in held:
        pool.release(blocks)
    assert pool.used == 0 and pool.available == num_blocks


def test_a_second_prompt_reuses_the_first_ones_full_prefix_blocks() -> None:
    pool = BlockPool(16, 4)
    written: dict[int, tuple[int, ...]] = {}
    first, hit = compute(pool, list(range(10)), written)
    assert hit == 0
    pool.release(first)
    second, hit = compute(pool, [*range(8), 42, 43, 44], written)
    assert hit == 8 and second[:2] == first[:2] and second[2] != first[2]


def test_the_last_token_is_always_computed_even_when_all_blocks_are_cached() -> None:
    pool = BlockPool(8, 4)
    written: dict[int, tuple[int, ...]] = {}
    pool.release(compute(pool, list(range(8)), written)[0])
    _, hit = compute(pool, list(range(8)), written)
    assert hit == 4  # the second block holds the last token: computed again for its logits


def test_a_different_block_before_means_no_hit_even_for_equal_tokens() -> None:
    pool = BlockPool(8, 2)
    written: dict[int, tuple[int, ...]] = {}
    pool.release(compute(pool, [1, 2, 3, 4, 5], written)[0])
    _, hit = compute(pool, [9, 9, 3, 4, 5], written)
    assert hit == 0


def test_eviction_takes_the_least_recently_released_and_a_prefix_last() -> None:
    pool = BlockPool(4, 1)
    written: dict[int, tuple[int, ...]] = {}
    a, _ = compute(pool, [1, 2, 3], written)  # blocks for 1, 2, 3; 1 and 2 registered (3 is still to compute)
    pool.release(a)
    assert pool.cached == 3 and pool.available == 4
    fresh = pool.allocate(2)  # the free block, then the least recently released cached one: the prefix's tail
    assert fresh is not None
    pool.release(fresh)
    _, hit = compute(pool, [1, 2, 3, 4], written)
    assert hit == 2  # blocks of 1 and 2 survived: released last-first, a prefix's head is evicted last


def test_allocation_takes_nothing_when_it_cannot_take_all() -> None:
    pool = BlockPool(3, 4)
    assert pool.allocate(4) is None and pool.available == 3
    assert pool.allocate(3) is not None and pool.available == 0
    with pytest.raises(ValueError, match="at least one block"):
        BlockPool(0, 4)


def test_without_prefix_caching_nothing_is_reused() -> None:
    pool = BlockPool(8, 2, prefix_caching=False)
    written: dict[int, tuple[int, ...]] = {}
    pool.release(compute(pool, [1, 2, 3, 4, 5], written)[0])
    _, hit = compute(pool, [1, 2, 3, 4, 5], written)
    assert hit == 0 and pool.cached == 0
