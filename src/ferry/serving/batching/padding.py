"""Ragged batches: cutting a group of requests into runs of similar length, so the model computes less padding."""

from __future__ import annotations

import numpy as np

from ferry.engines.tensor import Feeds


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
