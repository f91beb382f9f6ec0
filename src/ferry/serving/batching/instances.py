"""How many model instances (threads sharing one loaded model) a batched endpoint runs when its config names none."""

from __future__ import annotations

import os
from typing import Any

from ferry.settings import cores_per_worker, serving_workers


def default_instances(engine: Any) -> int:
    """One model instance per core this worker owns, plus a spare in a lone worker, for engines whose model
    call releases the GIL; else one.

    ONNX Runtime and torch run a session from several threads at once with one intra-op thread each, as
    Triton's ``instance_group`` runs copies of a model; a model call that holds the GIL (scikit-learn) gains
    nothing from a second thread, so it keeps one and ``ferry serve --workers`` is the way to more cores.
    The spare: in a single-process server every batch's answers and the requests that follow them pass
    through the one event loop between batches; a third instance on two cores runs a batch meanwhile
    (MiniLM, 32 connections: +3 to +16 % req/s in four runs, bench/README.md). Beside other workers it gains nothing.
    """
    if not getattr(engine, "releases_gil", False):
        return 1
    return cores_per_worker() + (1 if serving_workers() == 1 else 0)


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
