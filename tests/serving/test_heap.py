"""heap.settle: what a revision loaded is frozen out of full collections; what a retirement left in cycles is freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from ferry.serving.revisions.heap import settle


class Version:
    """Stands for what a loaded version holds: objects in a reference cycle, as modules and classes are."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # other tests in this process get the collector as Python starts it


@pytest.fixture
def generations() -> Iterator[list[int]]:
    """The generation of every collection that starts while the test runs (2: a walk of the whole heap)."""
    seen: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    yield seen
    gc.callbacks.remove(record)


def test_a_revision_that_only_loads_freezes_it_without_walking_the_heap(generations: list[int]):
    loaded = Version()
    settle(retired=False)
    assert gc.get_freeze_count() > 0
    assert not any(obj is loaded for obj in gc.get_objects())  # no collection walks it any more
    assert 2 not in generations, generations  # the pause a full collection costs: none


def test_a_retired_versions_cycles_are_freed_not_kept_frozen(generations: list[int]):
    old = Version()
    gone = weakref.ref(old)
    settle(retired=False)  # the revision that loaded it: frozen
    del old  # retired: nothing refers to it but itself
    settle(retired=True)  # the revision that retired it
    assert gone() is None
    assert generations.count(2) == 1, generations  # one full collection, for the retirement
    assert gc.get_freeze_count() > 0
