"""The model's linear layers on MKL's packed weights, for the decoding steps of a full batch (float32 on a CPU).

MKL's sgemm repacks the weight matrix on every call; for the few rows of a decoding step (one a sequence) that
repacking costs about as much as the product itself: 16 rows take 2.4x the time of one on SmolLM2's layers.
``torch.ops.mkl._mkl_linear`` takes the weight packed once, for one row count: 1.48x faster at 16 rows on those
layers, 1.2-1.3x at 4 to 128 (bench/README.md). A packed copy serves one row count only, so the engine packs for
``max_num_seqs`` (a step where every slot decodes; up to ``MAX_ROWS``) and pads a step of at least half that many
rows up to it (16 rows packed take less time than 8 plain); other steps (a prefill chunk among them) take the
plain product.

The copy costs the linear layers' bytes again. Packing must happen on the engine thread: MKL's packing runs on
an OpenMP team, and a second team in the process makes libgomp stop spinning between parallel regions, which slows
every step by about a quarter (measured: 70 against 93 ms a forward pass).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ferry.settings import memory_available

MAX_ROWS = 32
"""Past this many rows the plain product is efficient enough that a copy of the weights does not pay."""
MIN_ROWS = 4
"""A packed count below this gains nothing (one row: 0.93x)."""
MEMORY_SHARE = 0.1
"""The packed copy is made by default only where it takes at most this share of the memory available: it buys
about 5 % tokens/s at full load through `ferry serve` (bench/README.md), not worth crowding a machine."""


def packing_pays(lm_dtype: torch.dtype, device: torch.device, rows: int) -> bool:
    """Whether packing for ``rows`` rows pays: float32 on a CPU whose torch has MKL's packed linear (the only case
    it covers), a full step of ``MIN_ROWS`` to ``MAX_ROWS`` rows."""
    return (
        MIN_ROWS <= rows <= MAX_ROWS
        and lm_dtype == torch.float32
        and device.type == "cpu"
        and torch.backends.mkl.is_available()
        and hasattr(torch.ops.mkl, "_mkl_linear")
    )


class PackedLinear(torch.nn.Module):
    """A bias-aware linear layer over MKL's weight packed for ``rows`` rows, the plain product otherwise."""

    def __init__(self, linear: torch.nn.Linear, rows: int) -> None:
        super().__init__()
        self.weight, self.bias, self.rows = linear.weight, linear.bias, rows
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkl._mkl_reorder_linear_weight(linear.weight.detach(), rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel() // x.shape[-1]
        if n == self.rows:
            return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, self.bias, self.rows)
        if self.rows <= 2 * n < 2 * self.rows:  # at least half the packed rows: padded, still faster
            flat = F.pad(x.reshape(n, x.shape[-1]), (0, 0, 0, self.rows - n))
            out = torch.ops.mkl._mkl_linear(flat, self.packed, self.weight, self.bias, self.rows)[:n]
            return out.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)


def linear_bytes(model: Any) -> int:
    """The bytes of the float32 ``nn.Linear`` weights of ``model``: about what packing them adds."""
    return sum(
        m.weight.numel() * 4 for m in model.modules() if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32
    )


def crowding(model: Any) -> str | None:
    """Why a packed copy of ``model``'s linear layers would crowd the memory (over ``MEMORY_SHARE`` of what is
    available), else None."""
    wanted, room = linear_bytes(model), memory_available()
    if room is None or wanted <= room * MEMORY_SHARE:
        return None
    return (
        f"a packed copy ({wanted / 2**20:.0f} MiB) would take over {MEMORY_SHARE * 100:.0f} % of the "
        f"{room / 2**20:.0f} MiB available"
    )


def pack_linears(model: Any, rows: int) -> int:
    """Swap every float32 ``nn.Linear`` of ``model`` for a PackedLinear for ``rows`` rows; the bytes the copies add."""
    added = 0
    with torch.no_grad():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32:
                    packed = PackedLinear(child, rows)
                    setattr(parent, name, packed)
                    added += packed.packed.numel() * packed.packed.element_size()
    return added
