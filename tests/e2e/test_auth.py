"""A real `ferry serve --token-file`: locked routes over HTTP, open probes, the warning for an open public bind."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import Ferry, free_port
from tests.server import Server

pytestmark = pytest.mark.e2e

TOKEN = "s3cret-token-for-e2e"
WARNING = "without tokens: anyone who can reach this address can call every endpoint; lock it with --token-file"


def add_locked(ferry: Ferry, tmp_path: Path) -> None:
    """A custom endpoint `m` that answers {"tag": "locked"}."""
    path = tmp_path / "locked.py"
    path.write_text(
        "class Preprocess:\n    def process(self, data, state, collect=None):\n        return {'tag': 'locked'}\n"
    )
    ferry("model", "add", "--engine", "custom", "--endpoint", "m", "--preprocess", str(path))


def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# ferry serve tokens\n\n{TOKEN}\nanother-one\n")
    return path


def test_token_file_locks_every_route_but_the_probes(ferry_sqlite: Ferry, tmp_path: Path):
    ferry_sqlite.service()
    add_locked(ferry_sqlite, tmp_path)
    server = Server(tmp_path, "--host", "0.0.0.0", "--token-file", str(token_file(tmp_path)))
    authed = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    try:
        server.wait_ready()  # the probe answers without a token
        assert server.client.get("/health/live").status_code == 200
        server.wait_for(lambda: authed.post("/serve/m", json={}).status_code == 200)
        assert authed.post("/serve/m", json={}).json() == {"tag": "locked"}
        r = server.post("/serve/m", {})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.json()["kind"] == "Unauthorized"
        r = server.post("/serve/m", {}, headers={"Authorization": "Bearer guessed"})
        assert r.status_code == 403 and r.json()["kind"] == "Forbidden"
        assert server.client.get("/openapi.json").status_code == 401
        assert authed.get("/openapi.json").status_code == 200
        assert server.client.get("/serve/openai/v1/models").status_code == 401  # the OpenAI API is /serve too
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert server.post("/serve/openai/v1/chat/completions", chat).status_code == 401
        assert authed.get("/serve/openai/v1/models").json() == {"object": "list", "data": []}
        log = server.log()
        assert "requests need one of 2 bearer token(s)" in log
        assert TOKEN not in log and WARNING not in log  # tokens are never printed; locked, 0.0.0.0 is fine
    finally:
        authed.close()
        server.stop()


def test_tokens_variable_locks_serving(ferry_sqlite: Ferry, tmp_path: Path):
    ferry_sqlite.service()
    server = Server(tmp_path, env={"FERRY_SERVE_TOKENS": f"first,{TOKEN}"})
    try:
        server.wait_ready()
        assert server.client.get("/openapi.json").status_code == 401
        assert server.client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    finally:
        server.stop()


def test_public_bind_without_tokens_warns(ferry_sqlite: Ferry, tmp_path: Path):
    ferry_sqlite.service()
    server = Server(tmp_path, "--host", "0.0.0.0")
    try:
        server.wait_ready()
        assert "warning: serving on 0.0.0.0 " + WARNING in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("content", [None, "", "# no token yet\n\n"])
def test_missing_or_empty_token_file_refuses_to_serve(ferry_sqlite: Ferry, tmp_path: Path, content: str | None):
    ferry_sqlite.service()
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    result = ferry_sqlite("serve", "--port", str(free_port()), "--token-file", str(path), ok=False, process=True)
    assert result.code == 1
    expected = "holds no token" if content is not None else "cannot read the token file"
    assert expected in result.err and str(path) in result.err and "serving service" not in result.err


def test_help_shows_the_token_file_flag(ferry_sqlite: Ferry):
    out = ferry_sqlite("serve", "--help").out
    assert "--token-file FILE" in out and "Authorization: Bearer" in out
