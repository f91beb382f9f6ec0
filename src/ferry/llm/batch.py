"""The running sequences' KV caches as one left-padded batch: prefill a sequence, one decoding step, leave."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from transformers import DynamicCache

from ferry.llm.model import LoadedLM

_KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer: keys and values, each [batch, kv_heads, length, head_dim]."""


class DecodeBatch:
    """The running sequences' KV caches as one left-padded batch on the model's device.

    A sequence joins with ``prefill`` (its prompt run alone, B=1, then its cache merged into the batch's by left
    padding whichever side is shorter), every ``step`` runs ONE forward pass over all sequences in the batch
    ([B, 1] input ids, a [B, L] attention mask that masks the pads, explicit per-sequence position_ids), and a
    sequence leaves with ``remove`` (its row dropped; leading columns that are padding in every row trimmed).

    Padding sits before each row's tokens, so within a row cache index minus position is a constant: the
    causal (and sliding-window) masks, which compare cache indices, hold as they do for the row run alone.
    Not thread-safe: one engine loop owns it.
    """

    def __init__(self, lm: LoadedLM) -> None:
        _check_attention_only(lm.model.config)
        self._lm = lm
        self._rows: list[int] = []
        self._lengths: dict[int, int] = {}
        self._mask = torch.zeros((0, 0), dtype=torch.long, device=lm.device)
        self._cache: DynamicCache | None = None
        # Only the last position's logits are used: a prefill need not build [prompt, vocab] logits.
        accepts_keep = "logits_to_keep" in inspect.signature(lm.model.forward).parameters
        self._keep: dict[str, int] = {"logits_to_keep": 1} if accepts_keep else {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._lengths

    def length(self, seq_id: int) -> int:
        """Tokens in this sequence's cache: its prompt and the tokens generated so far, all but the last picked."""
        return self._lengths[seq_id]

    def prefill(self, seq_id: int, prompt_ids: Sequence[int]) -> torch.Tensor:
        """Run ``prompt_ids`` alone, add its cache to the batch, and return the logits (vocab,) of its next token."""
        if seq_id in self._lengths:
            raise ValueError(f"sequence {seq_id} is already in the batch")
        if not prompt_ids:
            raise ValueError("an empty prompt has no next token: give at least one token")
        if len(prompt_ids) > self._lm.max_model_len:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens, more than max_model_len {self._lm.max_model_len}"
            )
        input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self._lm.device)
        logits, cache = self._forward(input_ids, DynamicCache())
        self._join(seq_id, cache, len(prompt_ids))
        return logits[0]

    def step(self, tokens: Mapping[int, int]) -> dict[int, torch.Tensor]:
        """Feed each sequence the token it picked last; return each one's logits (vocab,) for its next token."""
        self._check_step(tokens)
        device = self._lm.device
        input_ids = torch.tensor([[tokens[s]] for s in self._rows], dtype=torch.long, device=device)
        positions = torch.tensor([[self._lengths[s]] for s in self._rows], dtype=torch.long, device=device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        logits, self._cache = self._forward(input_ids, self._cache, attention_mask=self._mask, position_ids=positions)
        for s in self._rows:
            self._lengths[s] += 1
        return {s: logits[row] for row, s in enumerate(self._rows)}

    def remove(self, seq_id: int) -> None:
        """Drop the sequence's row, then the leading columns that are padding in every row left."""
        if seq_id not in self._lengths:
            raise KeyError(f"sequence {seq_id} is not in the batch")
        row = self._rows.index(seq_id)
        del self._rows[row], self._lengths[seq_id]
        if not self._rows:
            self._mask, self._cache = self._mask[:0, :0], None
            return
        keep = torch.tensor([r for r in range(len(self._rows) + 1) if r != row], device=self._mask.device)
        mask = self._mask.index_select(0, keep)
        start = int(mask.any(dim=0).int().argmax())
        self._mask = mask[:, start:]
        assert self._cache is not None  # rows were left, so their cache is
        self._cache = _cache_of([(k[keep, :, start:], v[keep, :, start:]) for k, v in _layers(self._cache)])

    def _check_step(self, tokens: Mapping[int, int]) -> None:
        if not self._rows:
            raise ValueError("the batch is empty: prefill a sequence first")
        if tokens.keys() != self._lengths.keys():
            missing = sorted(self._lengths.keys() - tokens.keys())
            unknown = sorted(tokens.keys() - self._lengths.keys())
            raise ValueError(
                f"step needs one token for every sequence in the batch: missing {missing}, unknown {unknown}"
            )
        full = [s for s in self._rows if self._lengths[s] >= self._lm.max_model_len]
        if full:
            raise ValueError(f"sequences {full} are at max_model_len ({self._lm.max_model_len}) and cannot grow")

    def _join(self, seq_id: int, cache: DynamicCache, length: int) -> None:
        """Add a prefilled B=1 cache as the last row, left padding it or the batch to the longer of the two."""
        new_mask = self._mask.new_ones((1, length))
        if self._cache is None:
            self._mask, self._cache = new_mask, cache
        else:
            width = max(self._mask.shape[1], length)
            self._mask = _stack_left_padded(self._mask, new_mask, width)
            self._cache = _cache_of(
                [
                    (_stack_left_padded(old_k, new_k, width), _stack_left_padded(old_v, new_v, width))
                    for (old_k, old_v), (new_k, new_v) in zip(_layers(self._cache), _layers(cache), strict=True)
                ]
            )
        self._rows.append(seq_id)
        self._lengths[seq_id] = length

    def _forward(
        self, input_ids: torch.Tensor, cache: DynamicCache | None, **kwargs: Any
    ) -> tuple[torch.Tensor, DynamicCache]:
        with torch.inference_mode():
            out = self._lm.model(input_ids=input_ids, cache=cache, use_cache=True, **self._keep, **kwargs)
        return out.logits[:, -1, :], out.cache


def _check_attention_only(config: Any) -> None:
    """Refuse models whose cache is not plain attention (linear attention, state-space layers): rows of those
    caches are not keys and values that left padding can align."""
    layers = DynamicCache(config=config).layers
    unsupported = sorted({type(layer).__name__ for layer in layers} - {"DynamicLayer", "DynamicSlidingWindowLayer"})
    if unsupported:
        raise ValueError(f"DecodeBatch supports attention-only models; this model's cache has {', '.join(unsupported)}")


def _layers(cache: DynamicCache) -> _KV:
    """Each layer's keys and values (attention-only caches: ``_check_attention_only`` refused the others)."""
    return [(cast(torch.Tensor, layer.keys), cast(torch.Tensor, layer.values)) for layer in cache.layers]  # type: ignore[union-attr]


def _cache_of(kv: _KV) -> DynamicCache:
    """A cache holding ``kv`` in full-length layers: sliding-window layers would drop the tokens the mask needs."""
    cache = DynamicCache()
    for index, (keys, values) in enumerate(kv):
        cache.update(keys, values, index)
    return cache


def _stack_left_padded(batch: torch.Tensor, row: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([_left_pad(batch, width), _left_pad(row, width)], dim=0)


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``tensor`` with zeros before its sequence axis (the last for a mask, the one before for keys and values)."""
    axis = -1 if tensor.dim() == 2 else -2
    missing = width - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)
