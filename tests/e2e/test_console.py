"""The web console over a real `ferry serve` behind a path prefix: every page, escaped names, paging, errors."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tests.browser import ARGS, chromium_path
from tests.conftest import Ferry
from tests.e2e.conftest import FAST_POLL
from tests.server import Server

pytestmark = pytest.mark.e2e

MARKUP = "<img src=x onerror=alert(1)>"
"""A model name a page must show as text."""


@pytest.fixture(scope="module")
def console(e2e_home: Path, e2e_ferry: Ferry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A service with a markup-named sklearn model, two custom versions under a 70/30 canary and 22 revisions more,
    served by `ferry serve --root-path /ferry`."""
    work = tmp_path_factory.mktemp("console")
    ferry = e2e_ferry
    sid = ferry.service("console <b>demo</b>")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    joblib.dump(LogisticRegression().fit(x, (x.sum(axis=1) > 0).astype(int)), work / "m.pkl")
    upload = ferry("model", "upload", "--name", MARKUP, "--project", "demo", "--path", str(work / "m.pkl")).out
    mid = upload.strip().rsplit("=", 1)[1]
    ferry("--id", sid, "model", "add", "--engine", "sklearn", "--endpoint", "sk", "--model-id", mid)
    code = work / "tag.py"
    code.write_text(textwrap.dedent("""
        class Preprocess:
            def process(self, data, state, collect=None):
                return {"ok": True}
        """))  # fmt: skip
    for version in ("1", "2"):
        ferry("--id", sid, "model", "add", "--engine", "custom", "--endpoint", "tag", "--version", version,
              "--preprocess", str(code))  # fmt: skip
    ferry("--id", sid, "model", "canary", "--endpoint", "tag", "--weights", "0.7", "0.3",
          "--input-endpoints", "tag/1", "tag/2")  # fmt: skip
    for n in range(22):
        ferry("--id", sid, "config", "--metric-log-freq", str(round(0.5 + n / 100, 2)))
    server = Server(e2e_home.parent, "--id", sid, "--root-path", "/ferry", env=FAST_POLL)
    try:
        server.wait_ready()
        server.wait_endpoint("tag")
        yield {"sid": sid, "mid": mid, "server": server}
    finally:
        server.stop()


def page(console: dict, path: str, prefix: str = "/ferry") -> str:
    answer = console["server"].client.get(prefix + path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in answer.headers["content-security-policy"]  # default-src 'none': no script at all
    assert "<script" not in answer.text
    return answer.text


def test_the_services_page_links_each_service_under_the_prefix(console: dict) -> None:
    html = page(console, "/console/")
    sid = console["sid"]
    assert f'href="/ferry/console/services/{sid}"' in html
    assert "console &lt;b&gt;demo&lt;/b&gt;" in html and "<b>demo" not in html
    assert page(console, "/console/", prefix="") == html  # a proxy that keeps the prefix, or none: same page
    client = console["server"].client
    assert client.post("/ferry/serve/tag", json={}).json() == client.post("/serve/tag", json={}).json() == {"ok": True}
    css = client.get("/ferry/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_a_service_page_shows_endpoints_their_state_and_the_canary_split(console: dict) -> None:
    server, sid = console["server"], console["sid"]
    server.wait_for(lambda: ": ready, " in page(console, f"/console/services/{sid}"), 10, "the heartbeat's states")
    html = page(console, f"/console/services/{sid}")
    assert "up to 32 (default)" in html  # the sklearn endpoint's batching
    assert f'href="/ferry/console/models#{console["mid"]}"' in html
    assert re.search(r"tag/1 70\.0%.*tag/2 30\.0%", html, re.S)
    assert 'class="part part0 w14"' in html and 'class="part part1 w6"' in html  # the bar's widths: 70 % and 30 %


def test_the_models_page_shows_a_markup_name_as_text(console: dict) -> None:
    html = page(console, "/console/models")
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<img" not in html
    assert f'id="{console["mid"]}"' in html


def test_revisions_are_paged_newest_first(console: dict) -> None:
    sid = console["sid"]
    first = page(console, f"/console/services/{sid}/revisions")
    numbers = [int(n) for n in re.findall(r"<tr><td>(\d+)</td>", first)]
    assert len(numbers) == 20 and numbers == sorted(numbers, reverse=True)
    assert "page 1 of 2" in first and 'href="?page=2"' in first
    second = page(console, f"/console/services/{sid}/revisions?page=2")
    rest = [int(n) for n in re.findall(r"<tr><td>(\d+)</td>", second)]
    assert rest == list(range(min(numbers) - 1, 0, -1))  # the oldest, down to revision 1
    assert "page 2 of 2" in second and 'href="?page=1"' in second


def test_the_diff_between_two_revisions_is_what_apply_dry_run_lists(console: dict, e2e_ferry: Ferry) -> None:
    sid = console["sid"]
    added = page(console, f"/console/services/{sid}/diff?from=4&to=5")  # revision 5 added the canary
    assert "+ canary tag" in added and "tag/1" in added and "0.7" in added
    changed = page(console, f"/console/services/{sid}/diff?from=5&to=6")
    assert re.search(r"~ [^<]*</strong>", changed) and "metric_log_freq: 1.0 -&gt; 0.5" in changed
    assert "No differences." in page(console, f"/console/services/{sid}/diff?from=6&to=6")
    assert 'action="/ferry/console/services/' in page(console, f"/console/services/{sid}/revisions")  # the form
    missing = console["server"].client.get(f"/ferry/console/services/{sid}/diff?from=1&to=999")
    assert missing.status_code == 404, missing.text


def test_the_instances_page_shows_the_serving_process(console: dict) -> None:
    server, sid = console["server"], console["sid"]
    html = page(console, f"/console/services/{sid}/instances")
    assert f"pid {server.proc.pid}" in html and "up since" in html and "Recent warnings and errors" in html


def test_a_page_the_console_does_not_have_is_a_404_and_a_write_a_405(console: dict) -> None:
    client = console["server"].client
    missing = client.get("/ferry/console/nothing/here")
    assert missing.status_code == 404 and "start at /console/" in missing.text
    unknown = client.get("/ferry/console/services/no-such-service")
    assert unknown.status_code == 404, unknown.text
    assert client.post("/ferry/console/").status_code == 405


def test_every_page_loads_in_chromium_with_no_script_error_and_the_markup_name_as_text(
    console: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Headless Chromium (Debian's) over every page: no console error, no dialog, no <img> from the model's name;
    a screenshot of each page (FERRY_SCREENSHOTS, else the test's temporary folder) and keyboard focus reaching
    every link of the navigation."""
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("FERRY_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    base, sid = f"{console['server'].url}/ferry/console", console["sid"]
    pages = {
        "services": f"{base}/",
        "service": f"{base}/services/{sid}",
        "revisions": f"{base}/services/{sid}/revisions",
        "instances": f"{base}/services/{sid}/instances",
        "models": f"{base}/models",
    }
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
            for name, url in pages.items():
                page.goto(url)
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(shots / f"console-{name}.png"), full_page=True)
                assert page.evaluate("() => document.querySelectorAll('main img').length") == 0, name
            page.goto(pages["models"])
            assert MARKUP in page.inner_text("main")  # shown, as text
            violations = _serious_violations(browser, pages)
            page.goto(pages["services"])
            focused = []
            for _ in range(3):
                page.keyboard.press("Tab")
                focused.append(page.evaluate("() => document.activeElement.textContent.trim()"))
        finally:
            browser.close()
    assert not problems, problems
    assert not violations, violations
    assert focused == ["ferry", "services", "models"]  # the navigation, in order, by keyboard
    assert sorted(p.name for p in shots.glob("console-*.png")) == sorted(f"console-{n}.png" for n in pages)


AXE = Path(__file__).parents[1] / "browser_assets" / "node_modules" / "axe-core" / "axe.min.js"


def _serious_violations(browser, pages: dict[str, str]) -> list[str]:
    """axe-core's serious and critical findings on every page (labels, contrast, names, landmarks...). The pages'
    CSP allows no script, so axe runs in a context that bypasses it (the other checks keep the CSP)."""
    if not AXE.is_file():
        message = "axe-core is not installed (scripts/test.sh: npm ci --prefix tests/browser_assets)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    context = browser.new_context(bypass_csp=True)
    found = []
    try:
        page = context.new_page()
        for name, url in pages.items():
            page.goto(url)
            page.add_script_tag(path=str(AXE))
            result = page.evaluate("async () => await axe.run(document)")
            assert len(result["passes"]) >= 10, f"axe-core checked little on {name}: {result['passes']}"
            found += [
                f"{name}: {v['id']} ({v['impact']}): {v['help']} x{len(v['nodes'])}"
                for v in result["violations"]
                if v["impact"] in ("serious", "critical")
            ]
    finally:
        context.close()
    return found


def test_root_path_is_taken_as_a_plain_prefix() -> None:
    from ferry.cli.serve import _root_path
    from ferry.errors import InvalidInput

    assert [_root_path(p) for p in ("", "/", "ferry", "/ferry/", "/a/b")] == ["", "", "/ferry", "/ferry", "/a/b"]
    for bad in ("/a b", "/a?x=1", "/a#b", "/a//b"):
        with pytest.raises(InvalidInput, match="plain path prefix"):
            _root_path(bad)
