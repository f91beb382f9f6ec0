"""How hard the property tests and fuzzers try: bounded for CI and the inner loop, larger in a deep run.

`scripts/test.sh --deep` (FERRY_TEST_DEPTH=deep) multiplies every budget by ``DEEP_FACTOR``: run it before a
release or after touching batching, routing or request parsing. The bounded budgets keep each property test
under about a second and the HTTP fuzzers under ten.
"""

from __future__ import annotations

import os

DEEP = os.environ.get("FERRY_TEST_DEPTH", "").strip().lower() == "deep"
DEEP_FACTOR = 5


def examples(bounded: int) -> int:
    """A hypothesis ``max_examples`` (or a fuzzer's count): ``bounded`` normally, ``DEEP_FACTOR`` times it deep."""
    return bounded * DEEP_FACTOR if DEEP else bounded
