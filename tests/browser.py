"""Debian's Chromium for the browser tests (driven by Playwright with ``executable_path``: its own download
cannot reach the internet here)."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
"""Nothing the browser would fetch or start on its own."""


def chromium_path() -> str:
    """Its path; a failure in CI (scripts/test.sh installs it), a skip elsewhere."""
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is not installed (scripts/test.sh installs it)")
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    return CHROMIUM
