"""`ferry status`: up since, recent log lines (bounded in the table, all in --json), and what the log keeps."""

from __future__ import annotations

import logging
import time

from ferry.cli.context import Context
from ferry.serving.revisions.reconciler import RecentLog
from tests.conftest import Ferry


def test_status_shows_up_since_and_recent_lines(ferry_sqlite: Ferry):
    sid = ferry_sqlite.service()
    store = Context().store
    instance = store.register_instance(sid, "box", 4242)
    started = time.time() - 3 * 3600 - 125  # up 3 h 2 min
    lines = [f"2026-01-01 00:00:0{n}Z WARNING line {n}" for n in range(8)]
    endpoints = {"sentiment": {"state": "ready", "requests": 4, "errors": 1, "inflight": 0}}
    state = {"started_at": started, "heartbeat_interval": 2.0, "endpoints": endpoints, "log": lines}
    assert store.heartbeat(instance, 1, state)

    doc = ferry_sqlite("status", "--json").json()
    (inst,) = doc["instances"]
    assert inst["started_at"] == started and inst["up_since"] == time.strftime(
        "%Y-%m-%d %H:%M:%S", time.gmtime(started)
    )
    assert 3 * 3600 + 125 <= inst["uptime_s"] < 3 * 3600 + 185
    assert inst["state"]["log"] == lines  # all of them
    assert inst["state"]["endpoints"]["sentiment"]["requests"] == 4

    out = ferry_sqlite("status").out
    assert f"{inst['up_since']} (3 h 2 min ago)" in out
    assert "(3 earlier: see status --json)" in out
    assert [n for n in range(8) if f"line {n}" in out] == [3, 4, 5, 6, 7]  # the last five


def test_status_without_a_started_at_uses_the_registration_time(ferry_sqlite: Ferry):
    """An instance that has not beaten yet (or an older ferry) is up since it registered."""
    sid = ferry_sqlite.service()
    store = Context().store
    store.register_instance(sid, "box", 4242)
    (inst,) = ferry_sqlite("status", "--json").json()["instances"]
    assert 0 <= inst["uptime_s"] < 30
    assert "recent warnings and errors per instance: (none)" in ferry_sqlite("status").out


def record(level: int, message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("ferry.test", level, __file__, 1, message, args, None)


def test_recent_log_keeps_warnings_errors_and_revision_lines_bounded():
    recent = RecentLog(size=4)
    recent.handle(record(logging.INFO, "retrying %s endpoint(s) that failed to load", 1))
    recent.handle(record(logging.INFO, "revision %s live: %s endpoint(s), %s failed", 3, 2, 0))
    recent.handle(record(logging.WARNING, "store unreachable: %s", "x" * 1000))
    recent.handle(record(logging.ERROR, "error abc (EngineError): boom\nTraceback ...\n  line"))
    recent.handle(record(logging.DEBUG, "noise"))
    lines = recent.snapshot()
    assert [line.split(" ", 3)[2] for line in lines] == ["INFO", "WARNING", "ERROR"]
    assert lines[0].endswith(" INFO revision 3 live: 2 endpoint(s), 0 failed")
    assert lines[2].endswith(" ERROR error abc (EngineError): boom")  # its traceback lines dropped
    assert time.strptime(lines[0][:20], "%Y-%m-%d %H:%M:%SZ")  # a UTC date and time
    assert len(lines[1]) == RecentLog.LINE_CHARS and lines[1].endswith("…")
    for n in range(6):
        recent.handle(record(logging.WARNING, "warning %s", n))
    assert [line.rsplit(" ", 1)[1] for line in recent.snapshot()] == ["2", "3", "4", "5"]
