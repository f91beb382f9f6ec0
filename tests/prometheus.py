"""A real Prometheus subprocess for tests: scrape given targets on a free port, query it over its HTTP API."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import free_port
from tests.process import ChildServer, missing


class PrometheusError(AssertionError):
    """Prometheus refused a query or did not reach a state in time; the message is Prometheus' own."""


def prometheus_binary() -> str:
    """The `prometheus` command; skips the test where it is missing (fails under CI)."""
    found = shutil.which("prometheus")
    if found is None:
        missing("Prometheus is not installed (scripts/test.sh installs Debian's prometheus package)")
    return found


class Prometheus(ChildServer):
    """`prometheus` scraping ``targets`` ("host:port") as job ``job``, its data in a throwaway folder.

    Use as a context manager; ``port`` lets a test scrape Prometheus itself (its own /metrics).
    """

    name = "prometheus"
    error = PrometheusError

    def __init__(
        self,
        targets: list[str],
        scrape_interval: str = "1s",
        *,
        job: str = "ferry",
        port: int | None = None,
        http_sd: str | None = None,
    ) -> None:
        self.targets = list(targets)
        self.http_sd = http_sd
        """A URL answering Prometheus' HTTP service discovery (ferry's /metrics/targets): its targets are scraped."""
        self.scrape_interval = scrape_interval
        self.job = job
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = Path(tempfile.mkdtemp(prefix="ferry-prometheus-"))
        self.log_path = self.root / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def config(self) -> dict[str, Any]:
        """The prometheus.yml this instance runs with."""
        interval = self.scrape_interval
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": self.job, **self._discovery()}],
        }

    def _discovery(self) -> dict[str, Any]:
        if self.http_sd is not None:
            return {"http_sd_configs": [{"url": self.http_sd, "refresh_interval": self.scrape_interval}]}
        return {"static_configs": [{"targets": self.targets}]}

    def _start(self) -> None:
        config = self.root / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def _wait_up(self) -> None:
        self.wait_for(lambda: self.client.get("/-/ready").status_code == 200, 30, "/-/ready answering 200")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Evaluate ``promql`` now (/api/v1/query): the result's series, each {"metric": {...}, "value": [t, v]}."""
        body = self.client.get("/api/v1/query", params={"query": promql}).json()
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {promql!r}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_for_data(self, promql: str, timeout: float = 20) -> list[dict[str, Any]]:
        """Query until ``promql`` returns at least one series (rate() needs two scrapes); those series."""
        results: list[list[dict[str, Any]]] = [[]]

        def has_data() -> bool:
            results[0] = self.query(promql)
            return bool(results[0])

        self.wait_for(has_data, timeout, f"data for {promql!r}")
        return results[0]

    def targets_health(self) -> list[dict[str, Any]]:
        """The active targets (/api/v1/targets): scrapeUrl, health ("up", "down", "unknown"), lastError."""
        return self.client.get("/api/v1/targets", params={"state": "active"}).json()["data"]["activeTargets"]

    def wait_for_targets_up(self, timeout: float = 20) -> None:
        """Wait until every configured target has been scraped with health "up"."""

        def all_up() -> bool:
            active = self.targets_health()
            return len(active) == len(self.targets) and all(t["health"] == "up" for t in active)

        try:
            self.wait_for(all_up, timeout, "every target up")
        except PrometheusError as exc:
            states = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in self.targets_health()]
            raise PrometheusError(f"{exc}\ntargets (url, health, last error): {states}") from None

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it has not stopped within 5 s; then remove its folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.client.close()
        shutil.rmtree(self.root, ignore_errors=True)
