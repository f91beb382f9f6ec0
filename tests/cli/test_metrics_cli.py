"""`ferry metrics add|list|remove` through the real command: stored revisions, history, export and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ferry.cli.main import build_parser
from tests.conftest import Ferry


def test_add_list_remove_with_history_and_export(ferry_sqlite: Ferry, tmp_path: Path):
    ferry = ferry_sqlite
    ferry.service()
    ferry("model", "add", "--engine", "custom", "--endpoint", "sentiment", "--version", "2")
    added = ferry(
        "metrics", "add", "--endpoint", "sentiment/2", "--log-freq", "0.5",
        "--variable-scalar", "x0=10,0,0.5", "score=0.0/1.0/0.25",
        "--variable-enum", "label=positive,negative", "--variable-value", "latency_ms", "--variable-counter", "hits",
    )  # fmt: skip
    assert added.err == ""  # the endpoint exists: no warning
    kinds = "x0 (scalar), score (scalar), label (enum), latency_ms (value), hits (counter)"
    line = f"metrics sentiment/2 set: log_freq 0.5; {kinds}"
    assert added.out == f"revision 3: {line}\n"
    clash = ferry("metrics", "add", "--endpoint", "other/*", "--variable-value", "x0", ok=False)
    assert "'x0' is a scalar with buckets 0,0.5,10 on sentiment/2 but a value on other/*" in clash.err
    merged = ferry("metrics", "add", "--endpoint", "sentiment/2", "--variable-value", "x0")
    assert "variable 'x0' of sentiment/2 already existed: replaced it" in merged.err
    wild = ferry("metrics", "add", "--endpoint", "other/*", "--variable-value", "x0")  # the same kind now
    assert "no endpoint 'other/*' yet" in wild.err

    listed = ferry("metrics", "list", "--json").json()
    assert listed["revision"] == 5 and listed["metric_log_freq"] == 1.0
    s2 = listed["metrics"]["sentiment/2"]
    assert s2["log_freq"] == 0.5 and s2["variables"]["x0"]["kind"] == "value"
    assert s2["variables"]["score"]["buckets"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert s2["variables"]["label"] == {"kind": "enum", "buckets": [], "values": ["positive", "negative"]}
    assert listed["metrics"]["other/*"]["log_freq"] is None
    table = ferry("metrics", "list").out
    assert "0,0.25,0.5,0.75,1" in table and "1 (default)" in table

    exported = yaml.safe_load(ferry("export").out)
    assert set(exported["metrics"]) == {"sentiment/2", "other/*"}
    (tmp_path / "service.yaml").write_text(ferry("export").out)
    assert ferry("apply", "-f", "service.yaml").out.startswith("no changes")

    assert ferry("metrics", "remove", "--endpoint", "sentiment/2", "--variable", "x0").out.startswith("revision 6")
    assert ferry("metrics", "remove", "--endpoint", "other/*").out.startswith("revision 7")
    assert set(ferry("metrics", "list", "--json").json()["metrics"]) == {"sentiment/2"}
    summaries = [h["summary"] for h in ferry("history", "--json").json()]
    assert summaries[2:] == [
        line,
        line.replace("x0 (scalar)", "x0 (value)"),
        "metrics other/* set: log_freq service default; x0 (value)",
        "metric variable x0 of sentiment/2 removed",
        "metrics of other/* removed",
    ]


MISTAKES = [
    (["add", "--endpoint", "s", "--variable-value", "bad-name"], "invalid variable name 'bad-name'"),
    (["add", "--endpoint", "s", "--variable-scalar", "x=0/1/0"], "the step must be over 0"),
    (["add", "--endpoint", "s", "--variable-scalar", "x=1/0/0.1"], "MIN must be below MAX"),
    (["add", "--endpoint", "s", "--log-freq", "1.5"], "--log-freq 1.5: give the sampled fraction"),
    (["add", "--endpoint", "s"], "nothing to add"),
    (["add", "--endpoint", "a/b/c", "--variable-value", "x"], "give NAME, NAME/VERSION or NAME/*"),
    (["remove", "--endpoint", "s"], "no metrics configured for endpoint 's'; there are: kept"),
    (["remove", "--endpoint", "kept", "--variable", "y"], "logs no variable 'y'; it logs: x"),
]


def test_mistakes_are_one_line_errors_that_say_what_exists(ferry_sqlite: Ferry):
    ferry_sqlite.service()
    ferry_sqlite("metrics", "add", "--endpoint", "kept", "--variable-counter", "x")
    for args, message in MISTAKES:
        failed = ferry_sqlite("metrics", *args, ok=False)
        assert failed.code == 1 and message in failed.err and len(failed.err.strip().splitlines()) == 1, args
    assert ferry_sqlite("history", "--json").json()[-1]["revision"] == 2  # nothing written


def test_every_metrics_command_has_help(capsys: pytest.CaptureFixture[str]):
    for cmd in ([], ["add"], ["list"], ["remove"]):
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args(["metrics", *cmd, "--help"])
        assert done.value.code == 0
        assert f"usage: ferry metrics {' '.join(cmd)}".strip() in capsys.readouterr().out
