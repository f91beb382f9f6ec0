"""`ferry dashboard export` through the real command: stdout, --output, a service without endpoints, mistakes."""

from __future__ import annotations

import json
from pathlib import Path

from ferry.metrics.dashboard import queries
from tests.conftest import Ferry


def test_export_prints_or_writes_the_dashboard_of_the_current_endpoints(ferry_sqlite: Ferry, tmp_path: Path):
    ferry = ferry_sqlite
    service_id = ferry.service()
    ferry("model", "add", "--engine", "custom", "--endpoint", "sentiment")
    (tmp_path / "ranker.pkl").write_bytes(b"not loaded: export reads the config only")
    ferry("model", "upload", "--name", "ranker", "--framework", "sklearn", "--path", "ranker.pkl")
    ferry("model", "add", "--engine", "sklearn", "--endpoint", "ranker", "--version", "2", "--name", "ranker",
          "--aux-config", "max_batch_size=8")  # fmt: skip
    ferry("metrics", "add", "--endpoint", "sentiment", "--variable-scalar", "score=0/1/0.25",
          "--variable-enum", "label=positive,negative")  # fmt: skip

    printed = ferry("dashboard", "export")
    dashboard = printed.json()
    assert printed.err == "" and printed.out.startswith('{\n  "')  # indent 2
    assert dashboard["uid"] == f"ferry-{service_id}" and dashboard["title"] == "ferry: serving example"
    exprs = "\n".join(queries(dashboard))
    assert 'endpoint=~"ranker|sentiment"' in exprs and "ferry_batch_size_bucket" in exprs
    assert "ferry_custom_score_bucket" in exprs and "ferry_custom_label_total" in exprs

    written = ferry("dashboard", "export", "--output", "dash.json", "--title", "Ranking")
    assert written.out == ""
    assert written.err.strip() == "wrote dash.json: 17 panels for 2 endpoint(s) (ranker, sentiment)"
    from_file = json.loads((tmp_path / "dash.json").read_text())
    assert from_file == {**dashboard, "title": "Ranking"}
    assert [p.name for p in tmp_path.iterdir() if "dash" in p.name] == ["dash.json"]  # no partial file left

    ferry("model", "remove", "--endpoint", "ranker/2")
    again = ferry("dashboard", "export").json()
    assert again["uid"] == dashboard["uid"] and "ferry_batch" not in "\n".join(queries(again))


def test_a_service_without_endpoints_gets_a_dashboard_and_a_warning(ferry_sqlite: Ferry):
    ferry_sqlite.service()
    result = ferry_sqlite("dashboard", "export")
    assert "has no endpoints yet" in result.err and "ferry model add" in result.err
    exprs = queries(result.json())
    assert exprs and all('endpoint=~".+"' in expr for expr in exprs if "endpoint" in expr)


def test_mistakes_are_one_line_errors(ferry_sqlite: Ferry, tmp_path: Path):
    no_service = ferry_sqlite("dashboard", "export", ok=False)
    assert no_service.code == 1 and "no service exists yet" in no_service.err and no_service.out == ""
    ferry_sqlite.service()
    failed = ferry_sqlite("dashboard", "export", "--output", "nowhere/dash.json", ok=False)
    assert failed.code == 1 and "no folder nowhere" in failed.err and len(failed.err.strip().splitlines()) == 1
    assert not (tmp_path / "nowhere").exists()
    helped = ferry_sqlite("dashboard", "export", "--help")
    assert "--output FILE" in helped.out and "--title TEXT" in helped.out
