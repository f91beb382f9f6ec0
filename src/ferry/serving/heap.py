"""settle: keep Python's cyclic garbage collector from pausing the event loop for what a revision loaded.

A full collection walks every object the process holds. With a model's libraries loaded (scikit-learn,
numpy, SciPy, torch: hundreds of thousands of objects) one takes 100-150 ms on a 2-core VM, and it runs
on whichever thread allocates when the threshold trips, often the event loop: one request in a few
thousand waited that long (tests/e2e/test_request_path.py saw /health/live answer in 140 ms under load).
``gc.freeze()`` moves every object alive now into a generation the collector never walks, so later
collections walk only what requests create. Each revision change that loads or retires a version first
unfreezes and collects once, so what retired versions and earlier failed builds left in reference cycles
(their modules, classes, the user's objects) is freed rather than kept frozen: one full collection per
change instead of one every few thousand requests. A revision whose builds all failed settles nothing:
what they left was made after the last freeze, and the usual young-generation collections free it.
A Ray model replica (``rayserve/model.py``) loads its one version once and settles after it.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """After a revision was applied: free what it left in cycles, then freeze what stays loaded."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
