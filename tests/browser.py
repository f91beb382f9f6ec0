"""Debian's Chromium for the browser tests (driven by Playwright with ``executable_path``: its own download
cannot reach the internet here)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

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


@contextlib.contextmanager
def chromium_page(**page_options: Any) -> Iterator[tuple[Any, list[str]]]:
    """A new page in headless Chromium (closed after), with the list its script errors and error dialogs land in."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=ARGS)
        try:
            page = browser.new_page(**page_options)
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
            yield page, problems
        finally:
            browser.close()
