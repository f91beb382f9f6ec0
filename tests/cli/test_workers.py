"""`ferry serve --workers`: a count, or ``auto`` (the default): one per usable core, one for an LLM service."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from ferry.cli.workers import AUTO_MAX, resolve_workers, workers_arg
from ferry.control.spec import AutoUpdateSpec, EndpointSpec, ModelQuery, ServiceConfig
from ferry.settings import Settings, _cgroup_cpu_quota, usable_cores


def config(*engines: str, rule_engine: str | None = None) -> ServiceConfig:
    endpoints = {f"e{i}": EndpointSpec(name=f"e{i}", engine=engine, model_id="m1") for i, engine in enumerate(engines)}
    rules = {}
    if rule_engine:
        template = EndpointSpec(name="auto", engine=rule_engine, auto_update="auto")
        rules["auto"] = AutoUpdateSpec(endpoint="auto", query=ModelQuery(name="chat"), template=template)
    return ServiceConfig(endpoints=endpoints, auto_update=rules)


def test_auto_is_one_per_usable_core_at_most_eight():
    workers, why = resolve_workers("auto", lambda: config("sklearn", "onnxruntime"))
    assert workers == min(usable_cores(), AUTO_MAX) >= 1
    assert why.startswith(f"auto: one per core, {usable_cores()} usable"), why


@pytest.mark.parametrize("engines, rule", [(("sklearn", "llm"), None), (("vllm",), None), (("sklearn",), "llm")])
def test_auto_is_one_when_an_endpoint_or_a_rule_runs_an_llm(engines: tuple[str, ...], rule: str | None):
    workers, why = resolve_workers("auto", lambda: config(*engines, rule_engine=rule))
    assert workers == 1 and "LLM endpoint" in why and "--workers N" in why, why


def test_auto_is_one_while_the_store_cannot_be_read():
    assert resolve_workers("auto", lambda: None) == (1, "auto: 1 until the store answers (its endpoints decide)")


def test_a_count_given_is_kept_and_the_store_not_read():
    def unread() -> ServiceConfig:
        raise AssertionError("a count given needs no configuration")

    assert resolve_workers(3, unread) == (3, "")
    assert resolve_workers(1, unread) == (1, "")


@pytest.mark.parametrize("text, value", [("auto", "auto"), ("AUTO", "auto"), ("1", 1), ("12", 12)])
def test_the_flag_takes_a_count_or_auto(text: str, value: object):
    assert workers_arg(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5", ""])
def test_the_flag_refuses_anything_else_and_says_what_it_takes(text: str):
    with pytest.raises(argparse.ArgumentTypeError, match="a count of processes .* or auto"):
        workers_arg(text)


def test_the_setting_defaults_to_auto_and_reads_a_count(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FERRY_WORKERS", raising=False)
    assert Settings().workers == "auto"
    monkeypatch.setenv("FERRY_WORKERS", "3")
    assert Settings().workers == 3


@pytest.mark.parametrize(
    "text, cores", [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)]
)
def test_a_cgroup_cpu_quota_is_whole_cores_rounded_up(tmp_path: Path, text: str, cores: int | None):
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert _cgroup_cpu_quota(str(tmp_path / "cpu.max")) == cores


def test_usable_cores_are_within_the_affinity_mask(tmp_path: Path):
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))
    assert _cgroup_cpu_quota(str(tmp_path / "absent")) is None
