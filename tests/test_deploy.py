"""deploy/: the Prometheus config passes promtool, compose and Grafana provisioning agree; the Prometheus fixture."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port
from tests.prometheus import Prometheus, PrometheusError, prometheus_binary

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "ferry.json"


def load_yaml(relative: str) -> Any:
    return yaml.safe_load((DEPLOY / relative).read_text())


def compose_mounts(service: str) -> dict[str, str]:
    """The bind mounts of a compose service: container path -> host path (relative to deploy/)."""
    mounts = {}
    for volume in load_yaml("compose.yaml")["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def datasource_uids(node: Any) -> set[str]:
    """Every literal data source uid a dashboard refers to (panels, targets, variables, annotations)."""
    if isinstance(node, list):
        return set().union(*(datasource_uids(item) for item in node))
    if not isinstance(node, dict):
        return set()
    found = set().union(*(datasource_uids(value) for value in node.values()))
    source = node.get("datasource")
    if isinstance(source, dict) and isinstance(source.get("uid"), str) and not source["uid"].startswith("$"):
        found.add(source["uid"])
    return found


def test_prometheus_helper_scrapes_a_target() -> None:
    prometheus_binary()
    port = free_port()
    with Prometheus([f"127.0.0.1:{port}"], port=port) as prom:  # Prometheus scrapes its own /metrics
        prom.wait_for_targets_up(timeout=30)
        up = prom.query('up{job="ferry"}')
        assert [(s["metric"]["instance"], s["value"][1]) for s in up] == [(f"127.0.0.1:{port}", "1")]
        build = prom.wait_for_data('prometheus_build_info{job="ferry"}')
        assert build[0]["metric"]["version"] and build[0]["value"][1] == "1"
        ready = prom.query('prometheus_http_requests_total{job="ferry", handler="/-/ready"}')
        assert float(ready[0]["value"][1]) >= 1  # the fixture's own readiness polls
        with pytest.raises(PrometheusError, match="bad_data.*parse error"):
            prom.query("up{")
        pid = prom.proc.pid
    assert prom.proc.poll() is not None, f"prometheus {pid} still running after the with block"
    assert not prom.root.exists()


def test_promtool_accepts_the_deploy_config() -> None:
    prometheus_binary()
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: it comes with Debian's prometheus package (scripts/test.sh)"
    checked = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True)
    output = (checked.stdout + checked.stderr).decode()
    assert checked.returncode == 0 and "SUCCESS" in output, output


def test_deploy_config_scrapes_the_compose_ferry_service() -> None:
    compose = load_yaml("compose.yaml")
    ferry = compose["services"]["ferry"]
    assert ferry["command"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    jobs = {job["job_name"]: job for job in load_yaml("prometheus.yml")["scrape_configs"]}
    assert jobs["ferry"]["scrape_interval"] == "5s"
    assert jobs["ferry"]["static_configs"][0]["targets"] == ["ferry:8080"]
    assert compose_mounts("prometheus") == {"/etc/prometheus/prometheus.yml": "./prometheus.yml"}


def test_every_file_compose_mounts_or_builds_exists() -> None:
    compose = load_yaml("compose.yaml")
    build = compose["services"]["ferry"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert (context / build["dockerfile"]).is_file()
    assert (context / "pyproject.toml").is_file()  # the Dockerfile's `pip install .` needs the repository root
    for service in compose["services"]:
        for target, source in compose_mounts(service).items():
            assert (DEPLOY / source).exists(), f"compose service {service} mounts missing {source} at {target}"
    assert set(compose["services"]) == {"ferry", "prometheus", "grafana"}


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    mounts = compose_mounts("grafana")
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    [provider] = load_yaml("grafana/provisioning/dashboards/ferry.yml")["providers"]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    [source] = load_yaml("grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert (source["type"], source["uid"], source["isDefault"]) == ("prometheus", "prometheus", True)
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in load_yaml("compose.yaml")["services"]["prometheus"]["ports"]


def test_dashboard_uses_the_provisioned_datasource() -> None:
    if not DASHBOARD.exists():
        pytest.skip(f"{DASHBOARD} is not generated yet (`ferry dashboard export`)")
    [source] = load_yaml("grafana/provisioning/datasources/prometheus.yml")["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    # Panels name the `datasource` variable (${datasource}); its default is the uid that must be provisioned.
    variables = [v["current"]["value"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    uids = datasource_uids(dashboard) | set(variables)
    assert uids == {source["uid"]}, f"{DASHBOARD.name} refers to data sources {uids}, provisioning has {source['uid']}"
