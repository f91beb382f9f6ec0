"""`ferry serve --workers`: a count, or ``auto`` (the default): one per usable core, one for an LLM service."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from ferry.cli.workers import AUTO_MAX, MEMORY_SHARE, Machine, resolve_workers, workers_arg
from ferry.control.spec import AutoUpdateSpec, EndpointSpec, ModelQuery, ServiceConfig
from ferry.settings import Settings, _cgroup_cpu_quota, memory_available, usable_cores

GIB = 2**30


def no_models(config: ServiceConfig) -> int:
    return 0


def config(*engines: str, rule_engine: str | None = None) -> ServiceConfig:
    endpoints = {f"e{i}": EndpointSpec(name=f"e{i}", engine=engine, model_id="m1") for i, engine in enumerate(engines)}
    rules = {}
    if rule_engine:
        template = EndpointSpec(name="auto", engine=rule_engine, auto_update="auto")
        rules["auto"] = AutoUpdateSpec(endpoint="auto", query=ModelQuery(name="chat"), template=template)
    return ServiceConfig(endpoints=endpoints, auto_update=rules)


def test_auto_is_one_per_usable_core_at_most_eight():
    workers, why = resolve_workers("auto", lambda: config("sklearn", "onnxruntime"), no_models)
    assert workers == min(usable_cores(), AUTO_MAX) >= 1
    assert why.startswith(f"auto: one per core, {usable_cores()} usable"), why
    workers, why = resolve_workers("auto", lambda: config("sklearn"), no_models, lambda: Machine(64, 256 * GIB))
    assert workers == AUTO_MAX and why == "auto: one per core, 64 usable, at most 8", why


@pytest.mark.parametrize(
    "model_gib, free_gib, workers", [(1, 64, 8), (4, 64, 8), (5, 64, 6), (20, 64, 1), (40, 64, 1), (1, None, 8)]
)
def test_auto_keeps_the_models_copies_within_half_the_memory(model_gib: int, free_gib: int | None, workers: int):
    """Each worker loads every model: auto starts no more than half the free memory holds (at least one)."""
    machine = Machine(8, free_gib * GIB if free_gib else None)
    got, why = resolve_workers("auto", lambda: config("onnxruntime"), lambda _: model_gib * GIB, lambda: machine)
    assert got == workers
    assert got == 1 or free_gib is None or got * model_gib <= free_gib * MEMORY_SHARE
    assert ("keep to half of" in why) == (free_gib is not None and model_gib * 8 > free_gib * MEMORY_SHARE), why


@pytest.mark.parametrize("engines, rule", [(("sklearn", "llm"), None), (("vllm",), None), (("sklearn",), "llm")])
def test_auto_is_one_when_an_endpoint_or_a_rule_runs_an_llm(engines: tuple[str, ...], rule: str | None):
    workers, why = resolve_workers("auto", lambda: config(*engines, rule_engine=rule), no_models)
    assert workers == 1 and "LLM endpoint" in why and "--workers N" in why, why


def test_auto_is_one_while_the_store_cannot_be_read():
    assert resolve_workers("auto", lambda: None, no_models) == (
        1,
        "auto: 1, as the store could not be read to see the endpoints (--workers N to choose)",
    )


def test_a_count_given_is_kept_and_the_store_not_read():
    def unread() -> ServiceConfig:
        raise AssertionError("a count given needs no configuration")

    assert resolve_workers(3, unread, no_models) == (3, "")
    assert resolve_workers(1, unread, no_models) == (1, "")


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
    monkeypatch.setenv("FERRY_WORKERS", "Auto")
    assert Settings().workers == "auto"
    for wrong in ("0", "two"):
        monkeypatch.setenv("FERRY_WORKERS", wrong)
        with pytest.raises(ValidationError, match=f"FERRY_WORKERS='{wrong}': give a count of processes"):
            Settings()


@pytest.mark.parametrize(
    "text, cores", [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)]
)
def test_a_cgroup_cpu_quota_is_whole_cores_rounded_up(tmp_path: Path, text: str, cores: int | None):
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert _cgroup_cpu_quota(str(tmp_path / "cpu.max")) == cores


def test_usable_cores_are_within_the_affinity_mask(tmp_path: Path):
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))
    assert _cgroup_cpu_quota(str(tmp_path / "absent")) is None


def test_memory_available_is_meminfo_s_and_none_where_unknown(tmp_path: Path):
    (tmp_path / "meminfo").write_text("MemTotal: 2048 kB\nMemFree: 100 kB\nMemAvailable: 1024 kB\n")
    assert memory_available(str(tmp_path / "meminfo"), cgroup=str(tmp_path)) == 1024 * 1024
    (tmp_path / "bare").write_text("MemTotal: 2048 kB\n")
    assert memory_available(str(tmp_path / "bare"), cgroup=str(tmp_path)) is None
    assert memory_available(str(tmp_path / "absent"), cgroup=str(tmp_path)) is None
    assert (memory_available() or 0) > 0  # this Linux machine's


@pytest.mark.parametrize("limit, used, room", [("max", "100", None), ("1048576", "262144", 786432), ("100", "200", 0)])
def test_a_cgroup_memory_limit_cuts_what_is_available(tmp_path: Path, limit: str, used: str, room: int | None):
    """In a container /proc/meminfo shows the host's memory; the cgroup's limit less its use is what is left."""
    (tmp_path / "meminfo").write_text("MemAvailable: 4096 kB\n")  # 4 MiB
    (tmp_path / "memory.max").write_text(limit + "\n")
    (tmp_path / "memory.current").write_text(used + "\n")
    got = memory_available(str(tmp_path / "meminfo"), cgroup=str(tmp_path))
    assert got == (4096 * 1024 if room is None else room)
    assert memory_available(str(tmp_path / "absent"), cgroup=str(tmp_path)) == room
