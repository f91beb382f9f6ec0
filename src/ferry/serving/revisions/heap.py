"""settle: keep Python's cyclic garbage collector from pausing the event loop for what a revision loaded.

A full collection walks every object the process holds. With a model's libraries loaded (scikit-learn,
numpy, SciPy, torch: hundreds of thousands of objects) one takes 100-150 ms on a 2-core VM, and up to
~1 s in a process that imported as much as the test suite does; it runs on whichever thread allocates
when the threshold trips, often the event loop (tests/e2e/test_request_path.py saw /health/live answer in
140 ms under load). ``gc.freeze()`` moves every object alive now into a generation the collector never
walks, so later collections walk only what requests create; it walks nothing itself.

After a revision that only loaded versions, ``settle`` collects the young generations and freezes: no
pause. After one that retired a version, it unfreezes and runs one full collection first, so what the
retired version (and garbage frozen with earlier loads) left in reference cycles, its modules, classes and
the user's objects, is freed rather than kept frozen: one full collection per retirement instead of one
every few thousand requests. A revision whose builds all failed settles nothing: what they left is young,
and the usual collections free it. A Ray model replica (``rayserve/model.py``) loads its one version once
and settles after it.
"""

from __future__ import annotations

import gc


def settle(retired: bool) -> None:
    """After a revision was applied (``retired``: it unloaded a version): freeze what stays loaded."""
    if retired:
        gc.unfreeze()
        gc.collect()
    else:
        gc.collect(1)  # the young generations only: a walk of what the load allocated last, not the heap
    gc.freeze()
