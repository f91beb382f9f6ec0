"""deploy/kubernetes: every manifest is valid Kubernetes, the pieces name each other, and the pod's command runs."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from ferry.metrics.collectors import Metrics
from tests.conftest import FERRY_BIN, free_port
from tests.process import wait_until
from tests.prometheus import prometheus_binary

KUBE = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
VERSION = "1.30"
"""The oldest Kubernetes release the manifests target (autoscaling/v2 with behavior)."""


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KUBE.glob("*.yaml")):
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def one(kind: str, file: str | None = None) -> dict[str, Any]:
    (doc,) = [d for name, d in documents() if d["kind"] == kind and file in (None, name)]
    return doc


@pytest.mark.parametrize(("file", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_manifest_is_valid_kubernetes(file: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)  # raises ValidationError naming the field


def test_a_misspelt_field_fails_validation() -> None:
    deployment = copy.deepcopy(one("Deployment"))
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(deployment, VERSION, strict=True)


def test_the_pieces_name_each_other() -> None:
    deployment, service = one("Deployment"), one("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert service["spec"]["ports"][0]["targetPort"] in [p["name"] for p in container["ports"]]
    assert container["envFrom"][0]["configMapRef"]["name"] == one("ConfigMap", "ferry.yaml")["metadata"]["name"]
    for file in ("hpa-cpu.yaml", "hpa-requests.yaml"):
        target = one("HorizontalPodAutoscaler", file)["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_the_request_rate_metric_comes_from_a_series_ferry_exports() -> None:
    rules = yaml.safe_load(one("ConfigMap", "prometheus-adapter.yaml")["data"]["config.yaml"])["rules"]
    (rule,) = rules
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    exported = {m.name + "_total" for m in Metrics().registry.collect() if m.type == "counter"}
    assert series in exported, f"{series} is not one of ferry's counters {sorted(exported)}"
    pods = one("HorizontalPodAutoscaler", "hpa-requests.yaml")["spec"]["metrics"][0]["pods"]
    assert pods["metric"]["name"] == rule["name"]["as"]
    scrape = one("ConfigMap", "prometheus-k8s.yaml")["data"]["prometheus.yml"]
    assert {"target_label: namespace", "target_label: pod"} <= {line.strip() for line in scrape.splitlines()}


def test_the_prometheus_scrape_config_passes_promtool(tmp_path: Path) -> None:
    """Debian's Prometheus is built without Kubernetes discovery: promtool checks the rest (the relabel rules)."""
    promtool = Path(prometheus_binary()).with_name("promtool")
    config = yaml.safe_load(one("ConfigMap", "prometheus-k8s.yaml")["data"]["prometheus.yml"])
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [str(promtool), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_pods_command_serves_its_probes_and_metrics(tmp_path: Path) -> None:
    """The container's args and its ConfigMap's environment, run as they are (an empty store: probes still answer)."""
    deployment = one("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    args = [a if a != "0.0.0.0" else "127.0.0.1" for a in container["args"]]  # loopback only, here
    args[args.index("--port") + 1] = str(port)
    env = {**os.environ, **one("ConfigMap", "ferry.yaml")["data"], "FERRY_HOME": str(tmp_path)}
    env.pop("FERRY_ARTIFACT_ROOT")  # s3://my-bucket is the user's to fill in
    subprocess.run([FERRY_BIN, "create", "--name", "k8s"], env=env, check=True, capture_output=True)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - the server's life
    proc = subprocess.Popen([FERRY_BIN, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(base + container["readinessProbe"]["httpGet"]["path"]).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(
            proc, "ferry serve", ready, 60, "the readiness probe answering 200", (tmp_path / "serve.log").read_text
        )
        assert httpx.get(base + container["livenessProbe"]["httpGet"]["path"]).status_code == 200
        assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"])
        scraped = httpx.get(base + annotations["prometheus.io/path"])
        assert scraped.status_code == 200 and "ferry_process_resident_memory_bytes" in scraped.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
