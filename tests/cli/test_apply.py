"""`ferry export` and `ferry apply -f` through the real command, and a real server following an apply."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from tests.conftest import Ferry
from tests.server import Server

ANSWER = """
class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        return {{"answer": {answer!r}, "got": data}}
"""


def write_code(path: Path, answer: str) -> Path:
    path.write_text(ANSWER.format(answer=answer))
    return path


def revisions(ferry: Ferry) -> list[tuple[int, str]]:
    return [(h["revision"], h["summary"]) for h in ferry("history", "--json").json()]


def test_export_apply_round_trip_dry_run_and_change(ferry_sqlite: Ferry, tmp_path: Path):
    ferry = ferry_sqlite
    ferry.service()
    ferry("model", "add", "--engine", "custom", "--endpoint", "echo", "--preprocess",
          str(write_code(tmp_path / "one.py", "one")))  # fmt: skip
    ferry("model", "add", "--engine", "custom", "--endpoint", "echo", "--version", "2", "--preprocess",
          str(tmp_path / "one.py"))  # fmt: skip
    exported = ferry("export").out
    assert exported.startswith("# ferry service 'serving example'")
    (tmp_path / "service.yaml").write_text(exported)
    before = revisions(ferry)

    same = ferry("apply", "-f", "service.yaml")
    assert same.out == "no changes: the service already matches service.yaml\n"
    assert revisions(ferry) == before

    doc = yaml.safe_load(exported)
    write_code(tmp_path / "two.py", "two")
    doc["endpoints"]["echo/2"]["preprocess"] = {"path": "two.py"}
    del doc["endpoints"]["echo"]
    doc["settings"]["metric_log_freq"] = 0.5
    (tmp_path / "service.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    dry = ferry("apply", "-f", "service.yaml", "--dry-run")
    assert dry.out.splitlines() == [
        "- endpoint echo",
        "~ endpoint echo/2",
        f"    preprocess: one.py (sha256 {doc_sha(exported, 'echo/2')[:12]}, stored) -> two.py "
        f"(sha256 {sha_of(tmp_path / 'two.py')[:12]}, to upload)",
        "~ settings",
        "    metric_log_freq: 1.0 -> 0.5",
        f"would upload preprocess {tmp_path / 'two.py'}",
        "dry run: 3 change(s), nothing written",
    ]
    assert revisions(ferry) == before

    applied = ferry("apply", "-f", "service.yaml")
    summary = "apply: -endpoint echo, ~endpoint echo/2, ~settings"
    assert applied.out.splitlines()[-1] == f"revision {before[-1][0] + 1}: {summary}"
    assert revisions(ferry) == [*before, (before[-1][0] + 1, summary)]
    endpoints = ferry("model", "endpoints", "--json").json()["endpoints"]
    assert list(endpoints) == ["echo/2"] and endpoints["echo/2"]["preprocess"]["filename"] == "two.py"

    (tmp_path / "service.yaml").write_text(ferry("export").out)
    assert ferry("apply", "-f", "service.yaml").out.startswith("no changes")
    assert ferry("rollback", "--to", str(before[-1][0])).out.startswith("revision")
    assert set(ferry("model", "endpoints", "--json").json()["endpoints"]) == {"echo", "echo/2"}


def doc_sha(exported: str, key: str) -> str:
    return yaml.safe_load(exported)["endpoints"][key]["preprocess"]["sha256"]


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_apply_refuses_an_invalid_file_and_names_the_place(ferry_sqlite: Ferry, tmp_path: Path):
    ferry = ferry_sqlite
    ferry.service()
    ferry("model", "add", "--engine", "custom", "--endpoint", "echo")
    text = ferry("export").out.replace("engine: custom", "engine: custon") + "endpoint: {}\n"
    (tmp_path / "bad.yaml").write_text(text)
    before = revisions(ferry)

    refused = ferry("apply", "-f", "bad.yaml", ok=False)

    assert refused.code == 1
    line = text.splitlines().index("  echo:") + 2
    assert f"bad.yaml line {line}, endpoints.echo.engine: unknown engine 'custon'" in refused.err
    assert "endpoint: unknown key 'endpoint': the valid top-level keys are endpoints, canaries" in refused.err
    assert revisions(ferry) == before
    missing = ferry("apply", "-f", "nope.yaml", ok=False)
    assert "no file 'nope.yaml': write one with `ferry export > nope.yaml`" in missing.err


def test_a_running_server_follows_an_apply(ferry_sqlite: Ferry, tmp_path: Path):
    ferry = ferry_sqlite
    sid = ferry.service()
    ferry("model", "add", "--engine", "custom", "--endpoint", "echo", "--preprocess",
          str(write_code(tmp_path / "one.py", "one")))  # fmt: skip
    server = Server(tmp_path, "--id", sid)
    try:
        server.wait_ready()
        assert server.wait_endpoint("echo", {"x": 1}) == {"answer": "one", "got": {"x": 1}}
        doc = yaml.safe_load(ferry("export").out)
        doc["endpoints"]["echo"]["preprocess"] = str(write_code(tmp_path / "two.py", "two"))
        (tmp_path / "service.yaml").write_text(yaml.safe_dump(doc))
        ferry("apply", "-f", "service.yaml")
        server.wait_for(lambda: server.serve("echo", {"x": 1}).json()["answer"] == "two", 10, "the applied code")
    finally:
        server.stop()
