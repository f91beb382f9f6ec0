"""PagedKV: every running sequence's keys and values in fixed-size blocks of one pool per layer, and one forward
pass over a packed step, where decoding sequences (one token each) and prefill chunks (many) run side by side.

The model is a transformers causal LM whose attention goes through transformers' attention interface (every
model written the current way does). ``PagedKV`` registers its own attention function under the name
``ferry_paged`` and switches the model to it: the model computes queries, keys and values (rotary embedding
applied) as usual, and the function writes the step's new keys and values into their slots, reads each
sequence's whole context back from its blocks, and runs scaled-dot-product attention. No transformers cache
object is used, so nothing is copied when sequences join or leave: a sequence owns blocks (``llm/blocks.py``),
not rows of a padded batch.

A step's tokens are packed as one row ``[1, T]``: first one token per decoding sequence (their attention runs
as one batched call over their padded contexts), then each prefill chunk (one call each, causal within the chunk,
over the context already cached before it). Not thread-safe: one engine loop owns it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ferry.llm.model import LoadedLM

ATTENTION_NAME = "ferry_paged"
_active = threading.local()
"""The step being run on this thread: set around the forward pass, read by the attention function."""


@dataclass(frozen=True)
class Chunk:
    """The tokens one sequence feeds this step."""

    seq_id: int
    tokens: Sequence[int]
    start: int
    """The position of ``tokens[0]``: how many of the sequence's tokens are in the cache already."""
    blocks: Sequence[int]
    """The sequence's block table; it covers positions up to ``start + len(tokens) - 1``."""
    logits: bool = True
    """Whether the logits after this chunk's last token are wanted (a prompt's last chunk, every decode)."""


@dataclass
class _DecodeGroup:
    rows: torch.Tensor | None
    """[G] which decodes (positions in the packed row); None: all of them, in order."""
    slots: torch.Tensor
    """[G, L] each one's context slots, padded to the longest (padding reads the zeroed pad slot)."""
    mask: torch.Tensor | None
    """[G, 1, 1, L] True where a context is real; None when no row is padded."""


@dataclass
class _Step:
    """What the attention function needs, built once per step and shared by every layer."""

    kv: PagedKV
    slots: torch.Tensor
    """[T] the pool slot of each packed token, where its keys and values go."""
    decodes: int
    """How many leading packed tokens are single-token decodes (batched together)."""
    groups: list[_DecodeGroup]
    """The decodes in groups of similar context length (one attention call each, little padding)."""
    prefills: list[tuple[int, int, torch.Tensor | None, torch.Tensor | None]]
    """Per prefill chunk: its offset in the packed row, its length, its context slots (None when it starts at
    position 0: then its own keys and values are the whole context) and its mask (None: plain causal)."""


class PagedKV:
    """The block pools of one model (keys and values per layer) and the packed forward pass over them."""

    def __init__(self, lm: LoadedLM, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"the KV cache needs at least one block of one token, not {num_blocks} x {block_size}")
        check_supported(lm.model.config)
        self.lm = lm
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.pad_slot = num_blocks * block_size
        """One zeroed slot past the blocks: what padded context positions read (never a stale NaN)."""
        shape = (self.pad_slot + 1, *kv_shape(lm.model.config))
        layers = lm.model.config.get_text_config().num_hidden_layers
        # torch.empty: pages are committed as blocks are first written, so memory grows with use up to the budget
        self.keys = [_pool(shape, lm) for _ in range(layers)]
        self.values = [_pool(shape, lm) for _ in range(layers)]
        _use_paged_attention(lm.model)

    def forward(self, chunks: Sequence[Chunk]) -> dict[int, torch.Tensor]:
        """Run one packed forward pass; returns the logits (vocab,) after each chunk whose ``logits`` is set.

        The single-token chunks (decodes, ``start > 0``) that lead the list attend as one batched call per group
        of similar context lengths; every other chunk attends alone. The scheduler puts decodes first."""
        if not chunks:
            return {}
        device = self.lm.device
        ids = [t for c in chunks for t in c.tokens]
        positions = [c.start + i for c in chunks for i in range(len(c.tokens))]
        ends, offset = [], 0
        for c in chunks:
            offset += len(c.tokens)
            ends.append(offset - 1)
        wanted = [(c.seq_id, end) for c, end in zip(chunks, ends, strict=True) if c.logits]
        step = self._plan(chunks)
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        position_ids = torch.tensor([positions], dtype=torch.long, device=device)
        keep = torch.tensor([end for _, end in wanted], dtype=torch.long, device=device)
        _active.step = step
        try:
            with torch.inference_mode():
                out = self.lm.model(
                    input_ids=input_ids, position_ids=position_ids, use_cache=False, logits_to_keep=keep
                )
        finally:
            _active.step = None
        logits = out.logits[0]
        return {seq_id: logits[row] for row, (seq_id, _) in enumerate(wanted)}

    def _plan(self, chunks: Sequence[Chunk]) -> _Step:
        device = self.lm.device
        decodes = 0
        while decodes < len(chunks) and len(chunks[decodes].tokens) == 1 and chunks[decodes].start > 0:
            decodes += 1
        new_slots = [self._slots(c.blocks, c.start, c.start + 1) for c in chunks[:decodes]]
        lengths = [c.start + 1 for c in chunks[:decodes]]
        groups = [self._group(rows, chunks, lengths, decodes) for rows in _similar(lengths)]
        prefills: list[tuple[int, int, torch.Tensor | None, torch.Tensor | None]] = []
        offset = decodes
        for c in chunks[decodes:]:
            n = len(c.tokens)
            if c.start == 0:
                new_slots.append(self._slots(c.blocks, 0, n))
                prefills.append((offset, n, None, None))
            else:
                context = self._slots(c.blocks, 0, c.start + n)
                new_slots.append(context[c.start :])  # the chunk's own slots end its context
                rows = torch.arange(c.start, c.start + n, device=device)[:, None]
                mask = torch.arange(c.start + n, device=device)[None, :] <= rows
                prefills.append((offset, n, context, mask))
            offset += n
        return _Step(self, torch.cat(new_slots), decodes, groups, prefills)

    def _group(self, rows: list[int], chunks: Sequence[Chunk], lengths: list[int], decodes: int) -> _DecodeGroup:
        device, bs = self.lm.device, self.block_size
        width = max(lengths[r] for r in rows)
        nblocks = -(-width // bs)
        tables = [list(chunks[r].blocks[:nblocks]) for r in rows]
        table = torch.tensor([t + [0] * (nblocks - len(t)) for t in tables], dtype=torch.long, device=device)
        slots = (table[:, :, None] * bs + torch.arange(bs, device=device)).view(len(rows), -1)[:, :width]
        mask = None
        if min(lengths[r] for r in rows) != width:
            lens = torch.tensor([lengths[r] for r in rows], device=device)
            real = torch.arange(width, device=device)[None, :] < lens[:, None]
            slots = slots.where(real, self.pad_slot)
            mask = real[:, None, None, :]
        every = len(rows) == decodes and rows == sorted(rows)
        index = None if every else torch.tensor(rows, dtype=torch.long, device=device)
        return _DecodeGroup(index, slots, mask)

    def _slots(self, blocks: Sequence[int], start: int, end: int) -> torch.Tensor:
        """The pool slots of positions ``start`` to ``end - 1`` of a sequence with block table ``blocks``."""
        bs = self.block_size
        first, last = start // bs, (end - 1) // bs
        table = torch.tensor(list(blocks[first : last + 1]), dtype=torch.long, device=self.lm.device)
        slots = (table[:, None] * bs + torch.arange(bs, device=self.lm.device)).view(-1)
        return slots[start - first * bs : end - first * bs]


def check_supported(config: Any) -> None:
    """Refuse models whose layers are not plain attention over the whole context (linear attention, state-space
    layers, soft-capped logits): the paged attention function computes plain scaled-dot-product attention."""
    from transformers import DynamicCache

    layers = DynamicCache(config=config).layers
    unsupported = sorted({type(layer).__name__ for layer in layers} - {"DynamicLayer", "DynamicSlidingWindowLayer"})
    if unsupported:
        raise ValueError(f"the llm engine serves attention-only models; this model has {', '.join(unsupported)}")
    if getattr(config.get_text_config(), "attn_logit_softcapping", None):
        raise ValueError("the llm engine does not serve models with soft-capped attention logits")


def sliding_window(config: Any) -> int | None:
    """The attention window of a model whose layers (some or all) see only their last N tokens, else None."""
    text = config.get_text_config()
    window = getattr(text, "sliding_window", None)
    if not window or getattr(text, "use_sliding_window", True) is False:  # Qwen2 names a window it does not use
        return None
    return int(window)


def kv_shape(config: Any) -> tuple[int, int]:
    """(key/value heads, head size) of a model's attention layers."""
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return getattr(text, "num_key_value_heads", None) or heads, head_dim


def kv_bytes_per_token(lm: LoadedLM) -> int:
    """Bytes the keys and values of one token take over all layers."""
    kv_heads, head_dim = kv_shape(lm.model.config)
    layers = lm.model.config.get_text_config().num_hidden_layers
    return 2 * layers * kv_heads * head_dim * torch.tensor([], dtype=lm.dtype).element_size()


def _similar(lengths: list[int], slack: int = 256) -> list[list[int]]:
    """Indices of ``lengths`` in groups whose longest exceeds their shortest by at most ``slack`` tokens or half the
    shortest: padding the group to its longest wastes little, and one long context does not pad every row."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for index in order:
        if groups and lengths[index] - lengths[groups[-1][0]] <= max(slack, lengths[groups[-1][0]] // 2):
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def _pool(shape: tuple[int, ...], lm: LoadedLM) -> torch.Tensor:
    pool = torch.empty(shape, dtype=lm.dtype, device=lm.device)
    pool[-1].zero_()
    return pool


def _use_paged_attention(model: Any) -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _attention)
    model.set_attn_implementation(ATTENTION_NAME)


def _gather(pool: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``pool[slots]`` (slots of any shape), by index_select: several times faster than indexing on a CPU."""
    return pool.index_select(0, slots.reshape(-1)).view(*slots.shape, *pool.shape[1:])


def _decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, groups: list[_DecodeGroup], scaling: float | None
) -> torch.Tensor:
    """Single-token queries [B, heads, 1, head] over their contexts, a call per group; returns [B, heads, head]."""
    if len(groups) == 1 and groups[0].rows is None:
        return _group_attention(q, keys, values, groups[0], scaling)
    out = q.new_empty(q.shape[0], q.shape[1], q.shape[3])
    for group in groups:
        assert group.rows is not None  # only a lone group covering every row in order has none
        out[group.rows] = _group_attention(q.index_select(0, group.rows), keys, values, group, scaling)
    return out


def _group_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, group: _DecodeGroup, scaling: float | None
) -> torch.Tensor:
    k = _gather(keys, group.slots).transpose(1, 2)  # [G, kv_heads, L, head]
    v = _gather(values, group.slots).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=group.mask, scale=scaling, enable_gqa=True)[:, :, 0]


def _attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for one layer of a packed step: store the new keys and values, attend over each context.

    ``query`` is [1, heads, T, head], ``key`` and ``value`` [1, kv_heads, T, head]; returns [1, T, heads, head]."""
    step: _Step = _active.step
    layer = module.layer_idx
    keys, values = step.kv.keys[layer], step.kv.values[layer]
    new_k, new_v = key[0].transpose(0, 1), value[0].transpose(0, 1)  # [T, kv_heads, head]
    keys.index_copy_(0, step.slots, new_k)
    values.index_copy_(0, step.slots, new_v)
    outs = []
    b = step.decodes
    if b:
        q = query[0, :, :b].transpose(0, 1).unsqueeze(2)  # [B, heads, 1, head]
        outs.append(_decode_attention(q, keys, values, step.groups, scaling))  # [B, heads, head]
    for offset, n, context, mask in step.prefills:
        q = query[:, :, offset : offset + n]  # [1, heads, n, head]
        if context is None:
            k, v = key[:, :, offset : offset + n], value[:, :, offset : offset + n]
        else:
            k, v = _gather(keys, context).transpose(0, 1)[None], _gather(values, context).transpose(0, 1)[None]
        causal = mask is None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scaling, enable_gqa=True)
        outs.append(out[0].transpose(0, 1))  # [n, heads, head]
    return torch.cat(outs).unsqueeze(0), None
