"""heap.settle: what a revision loaded is frozen out of full collections; what left it in cycles is freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from ferry.serving.heap import settle


class Version:
    """Stands for what a loaded version holds: objects in a reference cycle, as modules and classes are."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # other tests in this process get the collector as Python starts it


def test_a_revision_going_live_freezes_what_is_loaded():
    loaded = Version()
    settle()
    assert gc.get_freeze_count() > 0
    assert not any(obj is loaded for obj in gc.get_objects())  # no collection walks it any more


def test_a_retired_version_or_failed_builds_cycles_are_freed_not_kept_frozen():
    old = Version()
    gone = weakref.ref(old)
    settle()  # the revision that loaded it
    del old  # retired, or a build that failed: nothing refers to it but itself
    settle()  # the next revision change
    assert gone() is None
    assert gc.get_freeze_count() > 0
