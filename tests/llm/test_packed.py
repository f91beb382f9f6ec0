"""Linear layers on MKL's packed weights: the same products as the plain ones, for the row counts they take, and
the engine's answers unchanged when it packs them on its own thread."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ferry.llm.loop import EngineLoop
from ferry.llm.model import load_lm
from ferry.llm.packed import MAX_ROWS, PackedLinear, pack_linears, packing_pays
from ferry.llm.params import SamplingParams
from tests.llm.sinks import Collector

pytestmark = [
    pytest.mark.usefixtures("single_torch_thread"),
    pytest.mark.skipif(not packing_pays(torch.float32, torch.device("cpu"), 16), reason="this torch has no MKL"),
]


@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_layer_computes_the_plain_product_for_every_row_count(bias: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 40, bias=bias)
    packed = PackedLinear(linear, 16)
    with torch.no_grad():
        for rows in (1, 3, 7, 8, 12, 15, 16, 17, 40):  # plain, padded to 16 (8 to 15), packed, plain again
            x = torch.randn(1, rows, 48)
            got, want = packed(x), F.linear(x, linear.weight, linear.bias)
            assert got.shape == want.shape == (1, rows, 40)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_packing_pays_for_float32_on_a_cpu_and_full_steps_of_4_to_32() -> None:
    cpu = torch.device("cpu")
    assert packing_pays(torch.float32, cpu, 4) and packing_pays(torch.float32, cpu, MAX_ROWS)
    assert not packing_pays(torch.float32, cpu, 1) and not packing_pays(torch.float32, cpu, MAX_ROWS + 1)
    assert not packing_pays(torch.float64, cpu, 16) and not packing_pays(torch.bfloat16, cpu, 16)


def test_a_packed_model_answers_as_before_and_keeps_its_tied_head(tiny_llama: Path) -> None:
    plain, packed = load_lm(tiny_llama, dtype="float32")[0], load_lm(tiny_llama, dtype="float32")[0]
    added = pack_linears(packed.model, 16)
    layers = [m for m in packed.model.modules() if isinstance(m, PackedLinear)]
    assert layers and not any(type(m) is torch.nn.Linear for m in packed.model.modules())
    assert added == sum(m.packed.numel() * 4 for m in layers)
    if packed.model.config.tie_word_embeddings:  # the head packs the embedding's weight, which stays shared
        assert packed.model.lm_head.weight is packed.model.get_input_embeddings().weight
    ids = torch.tensor([list(range(5, 21))])  # 16 rows: the packed path
    with torch.no_grad():
        want, got = plain.model(input_ids=ids).logits, packed.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _answers(lm: Any, packed: bool) -> tuple[list[list[int]], EngineLoop]:
    loop = EngineLoop(lm, f"packed-{packed}", max_num_seqs=16, packed_weights=packed)
    sinks = [Collector() for _ in range(16)]
    try:
        for i, sink in enumerate(sinks):  # 16 at once: decoding steps of 16 rows, the packed count
            loop.submit([5 + i, 6 + i, 7 + i], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), sink)
        return [s.wait().tokens for s in sinks], loop
    finally:
        loop.close()


def test_the_engine_packs_on_its_thread_and_answers_the_same(
    tiny_llama: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ferry.llm.loop")
    plain, _ = _answers(load_lm(tiny_llama, dtype="float32")[0], packed=False)
    lm = load_lm(tiny_llama, dtype="float32")[0]
    packed, loop = _answers(lm, packed=True)
    assert loop.packed_weights and any(isinstance(m, PackedLinear) for m in lm.model.modules())
    assert "linear layers packed for steps of 16 sequences" in caplog.text
    assert packed == plain


def test_no_copy_where_it_would_crowd_the_memory(
    tiny_llama: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy is made only where it takes at most a tenth of the memory available (here: 1 MiB available)."""
    caplog.set_level(logging.INFO, logger="ferry.llm.loop")
    monkeypatch.setattr("ferry.llm.packed.memory_available", lambda: 2**20)
    lm = load_lm(tiny_llama, dtype="float32")[0]
    _, loop = _answers(lm, packed=True)
    assert not loop.packed_weights and not any(isinstance(m, PackedLinear) for m in lm.model.modules())
    assert "linear layers left unpacked: a packed copy" in caplog.text
