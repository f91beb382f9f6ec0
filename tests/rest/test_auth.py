"""Bearer tokens in-process through httpx: 401 without, 403 for an unknown token, 200 with one, probes open."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from ferry.cli.serve import is_loopback
from ferry.errors import InvalidInput
from ferry.rest.app import FerryApp
from ferry.rest.auth import BearerAuth
from ferry.tokens import KnownTokens, load_tokens

pytestmark = pytest.mark.anyio

TOKENS = frozenset({"alpha-123", "beta-456"})
ECHO = "class Preprocess:\n    def process(self, d, s, c=None):\n        return {'got': d}\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def client(service):
    service.add("echo", code=service.code(ECHO))
    service.apply()
    app = FerryApp(service.plane, tokens=TOKENS)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ferry")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ["/serve/echo", "/serve/nope", "/openapi.json", "/docs", "/metrics", "/v2"])
async def test_no_token_is_401_with_the_bearer_challenge(client, path):
    r = await (client.post(path, json={"a": 1}) if path.startswith("/serve") else client.get(path))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["kind"] == "Unauthorized" and "Authorization: Bearer <token>" in r.json()["error"]


@pytest.mark.parametrize("value", ["Basic YWxwaGEtMTIzOg==", "Bearer", "Bearer   ", "alpha-123"])
async def test_a_header_that_is_not_a_bearer_token_is_401(client, value):
    r = await client.post("/serve/echo", json={}, headers={"Authorization": value})
    assert r.status_code == 401 and r.json()["kind"] == "Unauthorized"


@pytest.mark.parametrize("token", ["wrong", "alpha-12", "alpha-1234", "ALPHA-123", "beta-456,alpha-123"])
async def test_unknown_token_is_403_and_names_no_token(client, token):
    r = await client.post("/serve/echo", json={}, headers=bearer(token))
    assert r.status_code == 403
    assert r.json()["kind"] == "Forbidden"
    assert not any(t in r.text for t in TOKENS) and "www-authenticate" not in r.headers


@pytest.mark.parametrize("token", sorted(TOKENS))
async def test_each_known_token_is_served(client, token):
    r = await client.post("/serve/echo", json={"a": 1}, headers=bearer(token))
    assert r.status_code == 200 and r.json() == {"got": {"a": 1}}
    r = await client.get("/openapi.json", headers={"authorization": f"bearer {token}"})  # scheme is case-blind
    assert r.status_code == 200 and "/serve/echo" in r.json()["paths"]


async def test_health_probes_stay_open(client):
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/health/ready")).json()["status"] == "ready"


async def test_without_tokens_serving_stays_open(service):
    service.add("echo", code=service.code(ECHO))
    service.apply()
    app = FerryApp(service.plane)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ferry") as c:
        assert (await c.post("/serve/echo", json=1)).json() == {"got": 1}
    assert app.auth is None


def test_token_file_skips_blank_lines_and_comments(tmp_path: Path):
    path = tmp_path / "tokens"
    path.write_text("# ops team\nalpha-123\n\n   beta-456  \n  # old: gamma\n")
    assert load_tokens(path=str(path)).keys() == TOKENS
    assert load_tokens(" alpha-123 , ,beta-456", str(path)).keys() == TOKENS
    assert load_tokens("x,y") == {"x": "", "y": ""}
    assert load_tokens() == {}


def test_a_token_may_name_its_holder(tmp_path: Path):
    """A name after the token (file line or variable part) is who holds it: the author of the revisions it makes."""
    path = tmp_path / "tokens"
    path.write_text("alpha-123   # Ada  Lovelace \nbeta-456\ndelta-000\t#ops\ncorrect horse battery\nx#y\n")
    assert load_tokens("gamma-789 # ops bot", str(path)) == {
        "alpha-123": "Ada Lovelace",
        "beta-456": "",
        "gamma-789": "ops bot",
        "delta-000": "ops",
        "correct horse battery": "",  # a passphrase stays whole: only whitespace then # starts a name
        "x#y": "",
    }
    known = KnownTokens(load_tokens(path=str(path)))
    assert known.holder("alpha-123") == "Ada Lovelace"
    assert known.holder("beta-456") == "token " + hashlib.sha256(b"beta-456").hexdigest()[:8]  # named, not shown
    assert known.holder("alpha-123   # Ada") is None and known.holder("Ada Lovelace") is None
    assert known.holder("correct horse battery") == "token " + hashlib.sha256(b"correct horse battery").hexdigest()[:8]
    assert known.holder("correct") is None


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n  \n"])
def test_empty_token_file_is_an_error(tmp_path: Path, text: str):
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=f"token file {path} holds no token"):
        load_tokens(path=str(path))


def test_unreadable_token_file_is_an_error(tmp_path: Path):
    with pytest.raises(InvalidInput, match="cannot read the token file .*missing"):
        load_tokens(path=str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match="cannot read the token file"):
        load_tokens(path=str(tmp_path))  # a folder


def test_tokens_variable_of_only_commas_is_an_error():
    with pytest.raises(InvalidInput, match="FERRY_SERVE_TOKENS holds no token"):
        load_tokens(" , ,")


def test_every_token_is_compared(monkeypatch: pytest.MonkeyPatch):
    """No early exit: a match on the first token costs the same comparisons as no match at all."""
    import ferry.tokens as auth

    calls = []
    real = auth.hmac.compare_digest

    def counting(a, b):
        calls.append(1)
        return real(a, b)

    check = BearerAuth(["t1", "t2", "t3"])
    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert check.known("t1") and not check.known("nope")
    assert len(calls) == 6


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_which_hosts_are_loopback(host: str, loopback: bool):
    assert is_loopback(host) is loopback
