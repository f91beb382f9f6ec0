"""Ragged batches: which axes may differ between requests (``Axes``, from the endpoint's -1 sizes), padding them to
the longest request and cutting each answer back, and cutting a group into runs of similar length, so the model
computes less padding."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ferry.control.spec import EndpointSpec
from ferry.engines.tensor import Feeds


@dataclass(frozen=True)
class Axes:
    """Which axes may differ between requests of one batch: only those declared -1 in the endpoint's spec."""

    inputs: dict[str, frozenset[int]] = field(default_factory=dict)
    """Per input name, the axes after the batch axis declared -1; those are padded to the longest request."""
    outputs: tuple[frozenset[int], ...] | None = None
    """Per output (in order), the axes declared -1 that are cut back to the request's own length; None: none."""

    def stack_key(self, feeds: Feeds) -> tuple[Any, ...]:
        """Requests with equal keys can be stacked: same inputs, dtypes, ranks and sizes on fixed axes."""
        key = []
        for name, array in feeds.items():
            if array.ndim == 0:
                return (id(feeds),)  # a scalar has no batch axis to stack on: it runs alone
            padded = self.inputs.get(name, frozenset())
            fixed = tuple(-1 if axis in padded else size for axis, size in enumerate(array.shape) if axis)
            key.append((name, array.dtype.str, fixed))
        return tuple(key)


def batch_axes(spec: EndpointSpec, input_names: tuple[str, ...], rows_only: bool = False) -> Axes:
    """The axes declared -1 in ``--input-size`` (padded) and ``--output-size`` (cut back); none for row engines."""
    if rows_only:
        return Axes()
    inputs: dict[str, frozenset[int]] = {}
    for index, tensor in enumerate(spec.inputs):
        name = tensor.name or (input_names[index] if index < len(input_names) else None)
        if name and tensor.shape is not None:
            inputs[name] = _variable(tensor.shape)
    outputs = tuple(_variable(t.shape) if t.shape else frozenset() for t in spec.outputs) if spec.outputs else None
    return Axes(inputs, outputs)


def _variable(shape: tuple[int, ...]) -> frozenset[int]:
    return frozenset(axis for axis, size in enumerate(shape) if size == -1 and axis > 0)


def pad_to_largest(arrays: list[np.ndarray], pad_value: float) -> list[np.ndarray]:
    """Pad each array to the largest size on every axis (only -1 axes can differ: see ``Axes.stack_key``)."""
    target = np.max([a.shape for a in arrays], axis=0)
    out = []
    for array in arrays:
        widths = [(0, 0)] + [(0, int(target[ax]) - array.shape[ax]) for ax in range(1, array.ndim)]
        padded = any(w for _, w in widths)
        out.append(np.pad(array, widths, constant_values=pad_value) if padded else array)
    return out


def unpad(output: np.ndarray, axes: Iterable[int], lengths: dict[int, list[int]], index: int) -> np.ndarray:
    """Cut the output's declared -1 axes that were padded back to this request's own length."""
    for axis in axes:
        sizes = lengths.get(axis)
        if sizes and axis < output.ndim and output.shape[axis] == max(sizes) and sizes[index] < output.shape[axis]:
            output = np.take(output, np.arange(sizes[index]), axis=axis)
    return output


def cut_by_length(feeds_list: list[Feeds]) -> list[list[int]]:
    """Indices into ``feeds_list`` in runs, one model call each, shortest requests first.

    The requests are sorted by size and cut in two where that saves at least one average request's worth
    of padded elements, then each part again: a call's fixed cost is smaller than that for the models whose
    inputs are ragged (a transformer's call costs about its elements). Requests of one size stay one run.
    """
    rows = np.array([next(iter(f.values())).shape[0] for f in feeds_list], dtype=np.int64)
    widths = {name: np.array([f[name].shape[1:] for f in feeds_list], dtype=np.int64) for name in feeds_list[0]}
    if all((w == w[0]).all() for w in widths.values()):
        return [list(range(len(feeds_list)))]
    per_row = sum(np.prod(w, axis=1) for w in widths.values())
    least = float((rows * per_row).sum()) / len(feeds_list)
    order = np.argsort(per_row, kind="stable")
    return [part.tolist() for part in _cut(order, rows, widths, least)]


def _cut(order: np.ndarray, rows: np.ndarray, widths: dict[str, np.ndarray], least: float) -> list[np.ndarray]:
    """``order`` whole, or split where the two calls compute at least ``least`` fewer elements, recursively."""
    if len(order) < 2:
        return [order]
    mine = rows[order]
    left_rows = np.cumsum(mine)[:-1]
    right_rows = mine.sum() - left_rows
    whole, split = 0, np.zeros(len(order) - 1, dtype=np.int64)
    for width in widths.values():
        sizes = width[order]
        whole += int(mine.sum() * np.prod(sizes.max(axis=0)))
        left = np.prod(np.maximum.accumulate(sizes, axis=0), axis=1)[:-1]
        right = np.prod(np.maximum.accumulate(sizes[::-1], axis=0)[::-1], axis=1)[1:]
        split += left_rows * left + right_rows * right
    at = int(np.argmin(split))
    if whole - split[at] < least:
        return [order]
    return _cut(order[: at + 1], rows, widths, least) + _cut(order[at + 1 :], rows, widths, least)
