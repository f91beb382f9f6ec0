"""The web console over a real `ferry serve` behind a path prefix: every page, escaped names, paging, errors."""

from __future__ import annotations

import os
import re
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ferry.control.store import os_user
from tests.browser import chromium_page
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
    for version in ("1", "2"):
        code = work / f"tag{version}.py"
        code.write_text(textwrap.dedent(f"""
            class Preprocess:
                def process(self, data, state, collect=None):
                    return {{"tag": "tag/{version}"}}
            """))  # fmt: skip
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
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp  # no inline script can run
    scripts = re.findall(r"<script[^>]*>", answer.text)
    assert scripts == ['<script src="/ferry/console/static/console.js">'], scripts  # the console's own only
    return answer.text


def same_page_without_prefix(console: dict, path: str, tries: int = 10) -> bool:
    """Whether ``path`` renders the same with and without the /ferry prefix. The page carries live figures (CPU %,
    request counts) that a heartbeat between the two fetches changes (a CI run failed so), so a pair that
    straddled one is fetched again."""
    return any(page(console, path) == page(console, path, prefix="") for _ in range(tries))


def test_the_services_page_links_each_service_under_the_prefix(console: dict) -> None:
    html = page(console, "/console/")
    sid = console["sid"]
    assert f'href="/ferry/console/services/{sid}"' in html
    assert "console &lt;b&gt;demo&lt;/b&gt;" in html and "<b>demo" not in html
    assert same_page_without_prefix(console, "/console/")  # a proxy that keeps the prefix, or none: same page
    client = console["server"].client
    assert client.post("/ferry/serve/tag/1", json={}).json() == client.post("/serve/tag/1", json={}).json()
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


def test_requests_per_second_now_come_with_the_heartbeat(console: dict) -> None:
    server, sid = console["server"], console["sid"]

    def busy() -> bool:
        for _ in range(10):
            server.serve("tag/1", {})
        found = re.findall(r"tag/1</td>.*?, ([\d.]+) req/s now", page(console, f"/console/services/{sid}"), re.S)
        return bool(found) and float(found[0]) > 0

    server.wait_for(busy, 10, "a positive request rate on the service page")
    row = re.search(rf'services/{sid}">.*?</tr>', page(console, "/console/"), re.S).group(0)
    assert re.search(r"<td>(\d+\.\d)</td>\s*<td>(-|\d+\.\d %)</td>", row), row


def test_an_endpoint_s_recent_traffic_is_drawn_from_the_heartbeat_s_samples(console: dict) -> None:
    server, sid = console["server"], console["sid"]

    def drawn() -> bool:
        for _ in range(5):
            server.serve("tag/1", {})
        return '<svg class="chart"' in page(console, f"/console/services/{sid}")

    server.wait_for(drawn, 15, "a chart of tag/1's traffic (two samples, 1.5 s apart here)")
    html = page(console, f"/console/services/{sid}")
    assert re.search(r'aria-label="tag/1: [\d.]+ requests/s now, peak [\d.]+, over [\d.]+ min"', html)
    assert re.search(r"p99 [\d.]+ ms", html)  # latency from the endpoint's histogram


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
    shots = Path(os.environ.get("FERRY_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    base, sid = f"{console['server'].url}/ferry/console", console["sid"]
    pages = {
        "services": f"{base}/",
        "service": f"{base}/services/{sid}",
        "revisions": f"{base}/services/{sid}/revisions",
        "instances": f"{base}/services/{sid}/instances",
        "models": f"{base}/models",
        "login": f"{base}/login",
        "rollback": f"{base}/services/{sid}/rollback?to=2",
    }
    with chromium_page(viewport={"width": 1280, "height": 900}) as (page, problems):
        for name, url in pages.items():
            page.goto(url)
            page.wait_for_load_state("load")  # not "networkidle": live pages poll every heartbeat
            page.screenshot(path=str(shots / f"console-{name}.png"), full_page=True)
            assert page.evaluate("() => document.querySelectorAll('main img').length") == 0, name
        page.goto(pages["models"])
        assert MARKUP in page.inner_text("main")  # shown, as text
        violations = _serious_violations(page.context.browser, pages)
        page.goto(pages["services"])
        focused = []
        for _ in range(3):
            page.keyboard.press("Tab")
            focused.append(page.evaluate("() => document.activeElement.textContent.trim()"))
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
    from ferry.cli.serve import plain_root_path
    from ferry.errors import InvalidInput

    assert [plain_root_path(p) for p in ("", "/", "ferry", "/ferry/", "/a/b")] == ["", "", "/ferry", "/ferry", "/a/b"]
    for bad in ("/a b", "/a?x=1", "/a#b", "/a//b"):
        with pytest.raises(InvalidInput, match="plain path prefix"):
            plain_root_path(bad)


def tags(server: Server, n: int = 20) -> set[str]:
    return {server.serve("tag", {}).json()["tag"] for _ in range(n)}


def test_canary_weights_and_a_rollback_made_in_the_page_reach_the_server(console: dict) -> None:
    """In Chromium: the canary's weights set to 0 / 1 in the service page, then the revision before rolled back
    to from the revisions page (its confirm step); the next requests follow each, the rollback within 2 s."""
    server, sid = console["server"], console["sid"]
    base = f"{server.url}/ferry/console/services/{sid}"
    with chromium_page() as (page, problems):
        page.goto(base)
        page.fill("#w-1-1", "0")
        page.fill("#w-1-2", "1")
        page.click("form.weights button")
        page.wait_for_url(base)
        assert "tag/2 100.0%" in page.inner_text("main")
        server.wait_for(lambda: tags(server) == {"tag/2"}, 5, "the new weights served")
        weighted = server.client.get("/health/ready").json()["revision"]
        page.goto(f"{base}/revisions")
        assert f"{os_user()} on this machine (console)" in page.inner_text("main")  # the weights' author
        page.click(f'a[href$="/rollback?to={weighted - 1}"]')
        assert "canary tag" in page.inner_text("main")  # the confirm step lists what changes
        page.click("#confirm-rollback")
        page.wait_for_url(f"{base}/revisions")
        clicked = time.monotonic()
        server.wait_for(lambda: tags(server) == {"tag/1", "tag/2"}, 5, "the rollback served")
        took = time.monotonic() - clicked
        assert f"rollback to revision {weighted - 1}" in page.inner_text("main")
    assert not problems, problems
    assert took < 2.0, f"the rollback was served {took:.2f} s after the click"


def test_publish_and_tags_from_the_models_page_are_the_registry_s(console: dict, e2e_ferry: Ferry) -> None:
    client, mid = console["server"].client, console["mid"]
    models = page(console, "/console/models")
    token = re.search(r'name="form_token" value="([0-9a-f]+)"', models).group(1)
    origin = {"origin": console["server"].url}
    published = client.post(f"/ferry/console/models/{mid}/publish", data={"form_token": token}, headers=origin)
    assert published.status_code == 303 and published.headers["location"] == f"/ferry/console/models#{mid}"
    tagged = client.post(f"/ferry/console/models/{mid}/tags", data={"form_token": token, "tags": "prod, v1"},
                         headers=origin)  # fmt: skip
    assert tagged.status_code == 303
    (model,) = [m for m in e2e_ferry("model", "list", "--json").json() if m["id"] == mid]
    assert model["published"] and model["tags"] == ["prod", "v1"]


def test_a_write_from_another_site_or_without_the_form_token_is_refused(console: dict) -> None:
    client, sid = console["server"].client, console["sid"]
    token = re.search(r'name="form_token" value="([0-9a-f]+)"', page(console, "/console/models")).group(1)
    url = f"/ferry/console/services/{sid}/rollback"
    head = client.get("/health/ready").json()["revision"]
    cross = client.post(url, data={"form_token": token, "to": "1"}, headers={"origin": "http://evil.example"})
    assert cross.status_code == 403 and "another site" in cross.text
    bare = client.post(url, data={"to": "1"}, headers={"origin": console["server"].url})
    assert bare.status_code == 403 and "token is missing or stale" in bare.text
    assert client.get("/health/ready").json()["revision"] == head  # nothing written


def test_behind_tokens_a_browser_logs_in_and_a_write_needs_an_admin_token(
    console: dict, e2e_home: Path, tmp_path: Path
) -> None:
    """Serve tokens lock the pages (a browser is sent to the login page, which sets an HttpOnly, SameSite=Strict
    cookie); admin tokens lock the writes: a serve token reads but cannot write, an admin token can."""
    (tmp_path / "serve").write_text("reader-token\n")
    (tmp_path / "admins").write_text("# console admins\nsecret-admin\n")
    server = Server(e2e_home.parent, "--id", console["sid"], "--token-file", str(tmp_path / "serve"),
                    "--admin-token-file", str(tmp_path / "admins"), env=FAST_POLL)  # fmt: skip
    client, origin = server.client, {"origin": server.url}
    try:
        server.wait_ready()
        sent = client.get("/console/models")
        assert sent.status_code == 303 and sent.headers["location"] == "/console/login"
        assert "log in" in client.get("/console/login").text.lower()
        wrong = client.post("/console/login", data={"token": "guess"}, headers=origin)
        assert wrong.status_code == 403 and "not one this server accepts" in wrong.text
        reader = client.post("/console/login", data={"token": "reader-token"}, headers=origin)
        assert reader.status_code == 303
        cookie = reader.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
        html = client.get("/console/models").text  # the client keeps the cookie
        token = re.search(r'name="form_token" value="([0-9a-f]+)"', html).group(1)
        url, form = f"/console/models/{console['mid']}/tags", {"form_token": token, "tags": "audited"}
        refused = client.post(url, data=form, headers=origin)
        assert refused.status_code == 403 and "need an admin token" in refused.text
        bearer = client.post(url, data=form, headers={**origin, "authorization": "Bearer nope"})
        assert bearer.status_code == 403
        assert client.post("/console/login", data={"token": "secret-admin"}, headers=origin).status_code == 303
        done = client.post(url, data=form, headers=origin)
        assert done.status_code == 303, done.text
        assert client.post("/serve/tag/1", json={}).status_code == 401  # the API still wants its bearer header
    finally:
        server.stop()


def test_without_admin_tokens_only_loopback_may_write() -> None:
    from ferry.console.writes import Gate
    from ferry.errors import Forbidden

    gate = Gate.of([], b"key")
    form, headers = {"form_token": gate.token()}, {b"origin": "http://ferry:8080", b"host": "ferry:8080"}
    gate.check({"client": ("127.0.0.1", 5000)}, headers, form)
    gate.check({"client": ("::1", 5000)}, headers, form)
    with pytest.raises(Forbidden, match="this machine only while no admin token is set"):
        gate.check({"client": ("10.1.2.3", 5000)}, headers, form)


def test_a_write_s_author_is_the_admin_token_s_holder() -> None:
    """With admin tokens, a write records its token's name (``TOKEN # NAME`` in the file), else the token's digest
    prefix; the token itself is never shown."""
    from ferry.console.writes import Gate
    from ferry.tokens import load_tokens

    gate = Gate.of(load_tokens("s3cret # Grace Hopper, other-token"), b"key")
    form, headers = {"form_token": gate.token()}, {b"origin": "http://ferry:8080", b"host": "ferry:8080"}
    remote = {"client": ("10.1.2.3", 5000)}
    assert gate.check(remote, {**headers, b"authorization": "Bearer s3cret"}, form) == "Grace Hopper (console)"
    assert gate.check(remote, {**headers, b"cookie": "ferry_token=s3cret"}, form) == "Grace Hopper (console)"
    unnamed = gate.check(remote, {**headers, b"authorization": "Bearer other-token"}, form)
    assert re.fullmatch(r"token [0-9a-f]{8} \(console\)", unnamed) and "other" not in unnamed


def test_with_two_workers_a_form_from_one_posts_to_either(console: dict, e2e_home: Path, e2e_ferry: Ferry) -> None:
    """`ferry serve --workers 2`: both workers take the form key the parent set, so a form rendered by one is
    accepted by the other (each write on a new connection, which the kernel hands to either worker)."""
    sid = e2e_ferry.service("two workers")
    server = Server(e2e_home.parent, "--id", sid, "--workers", "2", env=FAST_POLL)
    try:
        server.wait_for(lambda: server.client.get("/health/live").status_code == 200, 30, "the workers up")
        server.wait_for(lambda: len(_instances(server, sid)) == 2, 20, "both workers' heartbeats")
        tokens = {_form_token(httpx.get(f"{server.url}/console/models").text) for _ in range(8)}
        url, form = f"{server.url}/console/models/{console['mid']}/tags", {"form_token": tokens.pop(), "tags": "w2"}
        codes = [httpx.post(url, data=form, headers={"origin": server.url}).status_code for _ in range(8)]
    finally:
        server.stop()
    assert not tokens, "the workers rendered different form tokens"
    assert codes == [303] * 8, codes


def _form_token(html: str) -> str:
    return re.search(r'name="form_token" value="([0-9a-f]+)"', html).group(1)


def _instances(server: Server, sid: str) -> list[str]:
    return re.findall(r"pid (\d+)", server.client.get(f"/console/services/{sid}/instances").text)


def test_ferry_console_serves_every_service_without_loading_a_model(console: dict, e2e_home: Path, e2e_ferry: Ferry):
    other = e2e_ferry.service("second service")
    server = Server(e2e_home.parent, command="console")
    try:
        server.wait_for(lambda: server.client.get("/health/live").status_code == 200, 20, "the console up")
        assert server.client.get("/").headers["location"] == "/console/"
        html = server.client.get("/console/").text
        assert f'href="/console/services/{console["sid"]}"' in html and f'href="/console/services/{other}"' in html
        service = server.client.get(f"/console/services/{console['sid']}").text
        assert "tag/1" in service and "on each instance" in service
        assert server.client.post("/serve/tag", json={}).status_code == 404  # no data plane here
        models = server.client.get("/console/models").text
        token = re.search(r'name="form_token" value="([0-9a-f]+)"', models).group(1)
        tagged = server.client.post(f"/console/models/{console['mid']}/tags", data={"form_token": token, "tags": "x"},
                                    headers={"origin": server.url})  # fmt: skip
        assert tagged.status_code == 303  # a write from loopback, no admin token set
        assert "serving" not in server.log()  # nothing loaded: no reconciler, no endpoint
    finally:
        server.stop()


COUNT_AT_LEAST = """n => {
    const text = document.querySelector("[data-live=endpoints]").innerText;
    const found = text.match(/tag\\/2\\s+custom[\\s\\S]*?(\\d+) requests/);
    return found !== null && Number(found[1]) >= n;
}"""
"""In the page: whether tag/2's request count has reached n."""


def test_counts_refresh_in_the_page_without_a_reload(console: dict) -> None:
    """Chromium on the service page: requests sent meanwhile show in the page's counts within a few heartbeats
    (0.3 s here), and the page was not reloaded (a marker set on its window survives)."""
    server, sid = console["server"], console["sid"]
    with chromium_page() as (page, problems):
        page.goto(f"{server.url}/ferry/console/services/{sid}")
        page.evaluate("() => { window.__ferry_marker = 1; }")
        before = int(re.search(r"tag/2\s+custom.*?(\d+) requests", page.inner_text("main"), re.S).group(1))
        for _ in range(7):
            server.serve("tag/2", {})
        page.wait_for_function(COUNT_AT_LEAST, arg=before + 7, timeout=5000)
        assert page.evaluate("() => window.__ferry_marker") == 1  # the same page: no reload
        assert "live, updated" in page.inner_text("#live-status")
    assert not problems, problems


HIDE = """hidden => {
    Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
    document.dispatchEvent(new Event("visibilitychange"));
}"""
"""In the page: the tab hidden (true) or shown again (false), as the browser says it when the user switches tabs."""


def test_a_hidden_tab_does_not_poll_and_catches_up_when_shown(console: dict) -> None:
    server, sid = console["server"], console["sid"]
    with chromium_page() as (page, problems):
        page.goto(f"{server.url}/ferry/console/services/{sid}")
        page.evaluate(COUNT_FETCHES)
        page.wait_for_function("() => window.__polls >= 2", timeout=5000)  # every 0.3 s here
        page.evaluate(HIDE, True)
        hidden = page.evaluate("() => window.__polls")
        page.wait_for_timeout(1500)
        quiet = page.evaluate("() => window.__polls") - hidden
        page.evaluate(HIDE, False)
        page.wait_for_function("n => window.__polls > n", arg=hidden + quiet, timeout=1000)  # at once, not a beat later
    assert quiet == 0, f"{quiet} polls while hidden"
    assert not problems, problems


COUNT_FETCHES = """() => {
    window.__polls = 0;
    const fetch = window.fetch;
    window.fetch = (...args) => { window.__polls += 1; return fetch(...args); };
}"""


def test_a_service_of_50_endpoints_and_10_instances_stays_responsive(e2e_home: Path, e2e_ferry: Ferry, console: dict):
    """50 endpoints and 10 instances' heartbeats (written to the store here): the page renders within a second and
    carries every endpoint with a state from every instance."""
    from ferry.control.spec import EndpointSpec
    from ferry.control.store import Store
    from ferry.settings import Settings

    sid = e2e_ferry.service("fifty")
    store = Store.open(Settings().store_url())  # the module's store (its FERRY_HOME)
    specs = {f"e{n}": EndpointSpec(name=f"e{n}", engine="custom") for n in range(50)}
    store.commit(sid, lambda config: (config.model_copy(update={"endpoints": specs}), "50 endpoints"))
    for n in range(10):
        instance = store.register_instance(sid, f"host{n}", 1000 + n)
        states = {key: {"state": "ready", "requests": 100 * n, "errors": n, "requests_per_s": 1.5} for key in specs}
        store.heartbeat(instance, 2, {"endpoints": states, "heartbeat_interval": 60.0, "started_at": 0.0})
    client = console["server"].client
    started = time.monotonic()
    html = client.get(f"/ferry/console/services/{sid}").text
    took = time.monotonic() - started
    assert html.count("ready, ") == 500 and "e49" in html
    assert took < 1.0, f"the page took {took:.2f} s"
    listing = client.get("/ferry/console/").text
    assert re.search(rf'services/{sid}">fifty</a></td>.*?<td>10</td>\s*<td>750.0</td>', listing, re.S)
