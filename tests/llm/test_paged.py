"""PagedKV: whatever the blocks, chunking and packing, the logits after each chunk are the model's own for that
sequence's tokens so far (float64, to 1e-9)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.llm.model import LoadedLM, load_lm
from ferry.llm.paged import Chunk, PagedKV, kv_bytes_per_token
from tests.budget import examples
from tests.llm.tiny import VOCAB_SIZE

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def paged64(tiny_llama: Path) -> LoadedLM:
    """A copy the paged attention is switched on for."""
    return load_lm(tiny_llama, dtype="float64", device="cpu")[0]


@pytest.fixture(scope="module")
def plain64(tiny_llama: Path) -> LoadedLM:
    """A copy left as transformers loads it: the reference."""
    return load_lm(tiny_llama, dtype="float64", device="cpu")[0]


def reference(lm: LoadedLM, tokens: Sequence[int]) -> torch.Tensor:
    """The model's own logits after ``tokens`` (one forward pass over all of them, no cache)."""
    with torch.inference_mode():
        return lm.model(input_ids=torch.tensor([list(tokens)])).logits[0, -1]


@dataclass(frozen=True)
class Case:
    sequences: list[list[int]]
    chunk_sizes: list[int]
    block_size: int
    seed: int


cases = st.builds(
    Case,
    sequences=st.lists(st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=1, max_size=40), min_size=1, max_size=4),
    chunk_sizes=st.lists(st.integers(1, 24), min_size=1, max_size=12),
    block_size=st.sampled_from([1, 3, 4, 16]),
    seed=st.integers(0, 2**16),
)


@settings(max_examples=examples(25), deadline=None)
@given(case=cases)
def test_every_chunks_logits_equal_the_models_own(paged64: LoadedLM, plain64: LoadedLM, case: Case) -> None:
    rng = random.Random(case.seed)
    bs = case.block_size
    need = sum(-(-len(s) // bs) for s in case.sequences)
    free = list(range(need + 3))
    rng.shuffle(free)  # block tables out of order, interleaved between sequences
    tables = [[free.pop() for _ in range(-(-len(s) // bs))] for s in case.sequences]
    kv = PagedKV(paged64, need + 3, bs)
    done = [0] * len(case.sequences)
    tick = 0
    while any(d < len(s) for d, s in zip(done, case.sequences, strict=True)):
        chunks = []
        for i, seq in enumerate(case.sequences):
            if done[i] < len(seq) and rng.random() < 0.8:
                n = min(case.chunk_sizes[tick % len(case.chunk_sizes)], len(seq) - done[i])
                chunks.append(Chunk(i, seq[done[i] : done[i] + n], done[i], tables[i], logits=True))
                tick += 1
        rng.shuffle(chunks)  # decodes need not come first: only leading ones are grouped
        for seq_id, logits in kv.forward(chunks).items():
            chunk = next(c for c in chunks if c.seq_id == seq_id)
            end = chunk.start + len(chunk.tokens)
            diff = float((logits - reference(plain64, case.sequences[seq_id][:end])).abs().max())
            assert diff < 1e-9, f"sequence {seq_id} after {end} tokens: logits differ by {diff}"
        for c in chunks:
            done[c.seq_id] += len(c.tokens)


def test_only_chunks_that_ask_get_logits_of_the_vocab_shape(tiny_llama: Path) -> None:
    lm = load_lm(tiny_llama, dtype="float32", device="cpu")[0]
    kv = PagedKV(lm, 8, 4)
    out = kv.forward([Chunk(1, [1, 2, 3, 4, 5], 0, [0, 1], logits=False), Chunk(2, [7, 8], 0, [2])])
    assert list(out) == [2]
    assert out[2].shape == (VOCAB_SIZE,) and out[2].dtype == torch.float32
    assert kv.forward([]) == {}


def test_padded_decode_rows_never_read_uninitialised_slots(paged64: LoadedLM, plain64: LoadedLM) -> None:
    kv = PagedKV(paged64, 8, 4)
    for pool in kv.keys + kv.values:
        pool[:-1] = float("nan")  # what a fresh pool may hold; the pad slot stays zero
    short, long = [5, 6], list(range(10, 19))
    kv.forward([Chunk(0, short, 0, [0]), Chunk(1, long, 0, [1, 2, 3])])
    out = kv.forward([Chunk(0, [7], 2, [0]), Chunk(1, [19], 9, [1, 2, 3])])  # row 0 is padded to 10 slots
    assert float((out[0] - reference(plain64, [*short, 7])).abs().max()) < 1e-9
    assert float((out[1] - reference(plain64, [*long, 19])).abs().max()) < 1e-9


def test_a_token_takes_two_tensors_per_layer_of_kv_heads_by_head_size(tiny_llama: Path) -> None:
    lm = load_lm(tiny_llama, dtype="float32", device="cpu")[0]
    config = lm.model.config
    head = config.hidden_size // config.num_attention_heads
    assert kv_bytes_per_token(lm) == 2 * config.num_hidden_layers * config.num_key_value_heads * head * 4
    with pytest.raises(ValueError, match="at least one block"):
        PagedKV(lm, 0, 16)


def test_decodes_of_very_different_lengths_attend_in_groups_and_keep_their_rows(
    paged64: LoadedLM, plain64: LoadedLM
) -> None:
    prompts = [[(3 * i) % VOCAB_SIZE for i in range(400)], [5, 6, 7], [(5 * i) % VOCAB_SIZE for i in range(380)]]
    kv = PagedKV(paged64, 64, 16)
    tables = [list(range(0, 26)), [26], list(range(27, 51))]
    kv.forward([Chunk(i, p, 0, tables[i], logits=False) for i, p in enumerate(prompts)])
    step = kv._plan([Chunk(i, [9], len(p), tables[i]) for i, p in enumerate(prompts)])
    assert sorted(tuple(g.rows.tolist()) for g in step.groups if g.rows is not None) == [(1,), (2, 0)]
    out = kv.forward([Chunk(i, [9], len(p), tables[i]) for i, p in enumerate(prompts)])
    for i, prompt in enumerate(prompts):
        assert float((out[i] - reference(plain64, [*prompt, 9])).abs().max()) < 1e-9
