"""ray_scaling.py [SECONDS]: `ferry serve --ray` scaling its stages apart, as replica counts over time.

A one-node Ray cluster of its own (`ray start --head`, 8 logical CPUs whatever the cores), a service with
two endpoints and `ferry serve --ray` for it (ingress 1-3 replicas, target 2 requests a replica; models 1-3):

  burn       a preprocess doing a fixed ~50 ms of Python work; a model that answers at once
  slowmodel  nothing in pre/post; a model that sleeps 200 ms

Phases of SECONDS each (default 40): 8 clients on burn, idle, 8 clients on slowmodel, idle. Every 2 s a
line: elapsed s, phase, answers/s, median ms, replicas running (ingress, burn's model, slowmodel's model) as
the launcher reports them to `ferry status`. The pace is quicker than the defaults (printed in the header)
so a run shows growth and shrinkage in minutes: Serve's autoscaling reads load every second here.

Run with the repository's venv: `.venv/bin/python bench/ray_scaling.py 40`. Loopback only; it stops the
cluster and the server it started.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
CLIENTS = 8
LOGICAL_CPUS = 8
"""What the cluster offers Ray's scheduler: 3 ingress replicas (1 CPU each) and 6 model replicas (0.25) fit."""
SAMPLE_S = 2.0
PACE = {
    "FERRY_RAY_UPSCALE_DELAY_S": "3",
    "FERRY_RAY_DOWNSCALE_DELAY_S": "15",
    "FERRY_RAY_LOOK_BACK_S": "4",
}
"""Autoscaling pace for every deployment (defaults 10, 120 and 10 s)."""
PUSH = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
}
"""Replicas and handles report their load every second (Ray's default: 10 s); the cluster inherits it."""

BURN = """
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        n = 0
        for _ in range(600_000):  # a fixed amount of Python work holding the GIL: ~50 ms of one core here
            n += 1
        return body

    def process(self, data, state, collect_custom_statistics_fn=None):
        return data
"""
SLOW_MODEL = """
import time


class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        time.sleep(0.2)  # the model's time: no CPU in pre/post
        return data
"""
ENDPOINTS = {"burn": (BURN, 4), "slowmodel": (SLOW_MODEL, 2)}
"""Endpoint -> (its Preprocess, ray.target_ongoing_requests). Burn's model target allows for the ingress's
event loop waiting on the GIL while pre/post burns (docs/scaling.md)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ferry(env: dict[str, str], *args: str) -> str:
    return subprocess.run([str(BIN / "ferry"), *args], env=env, check=True, capture_output=True, text=True).stdout


def setup(home: Path, env: dict[str, str]) -> str:
    """A service with the two endpoints; its id."""
    sid = ferry(env, "create", "--name", "ray scaling").strip().rsplit("id=", 1)[1]
    for endpoint, (code, target) in ENDPOINTS.items():
        source = home / f"{endpoint}.py"
        source.write_text(code)
        ferry(env, "--id", sid, "model", "add", "--engine", "custom", "--endpoint", endpoint, "--preprocess",
              str(source), "--aux-config", "ray.num_cpus=0.25", "ray.max_replicas=3",
              f"ray.target_ongoing_requests={target}")  # fmt: skip
    return sid


class Load:
    """CLIENTS threads POSTing to the endpoint in ``self.endpoint`` (None: idle); answers and latencies."""

    def __init__(self, url: str) -> None:
        self.url, self.endpoint = url, None
        self.latencies: list[float] = []
        self.failed = collections.Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                endpoint = self.endpoint
                if endpoint is None:
                    time.sleep(0.05)
                    continue
                start = time.perf_counter()
                response = http.post(f"/serve/{endpoint}", json={"x": 1})
                if response.status_code == 200:
                    self.latencies.append(time.perf_counter() - start)
                else:
                    self.failed[response.status_code] += 1

    def take(self) -> list[float]:
        taken, self.latencies = self.latencies, []
        return taken

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def replicas(store, sid: str) -> tuple[int, ...]:
    """Running replicas: the ingress, then each endpoint's model, from the launcher's last heartbeat."""
    launchers = [i for i in store.list_instances(sid) if i.state.get("role") == "ray launcher"]
    if not launchers:
        return (0,) * (1 + len(ENDPOINTS))
    apps = launchers[0].state.get("ray", {})

    def running(part: str, deployment: str) -> int:
        found = [a for name, a in apps.items() if part(name)]
        return sum(a["deployments"].get(deployment, {}).get("replicas", {}).get("RUNNING", 0) for a in found)

    ingress = running(lambda name: name.count("-") == 1, "ingress")
    return (ingress, *(running(lambda name, e=e: f"-{e}_" in name or f"-{e}-" in name, "model") for e in ENDPOINTS))


def wait_answering(url: str, endpoint: str, timeout: float = 180, body: object = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"{url}/serve/{endpoint}", json=body or {"x": 1}, timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"/serve/{endpoint} did not answer within {timeout:g} s")


def measure(load: Load, store, sid: str, secs: float) -> None:
    phases = [("burn", "burn"), ("idle", None), ("slowmodel", "slowmodel"), ("idle", None)]
    names = " ".join(f"{e}-model" for e in ENDPOINTS)
    print(f"{'t_s':>5} {'phase':<10} {'answers/s':>9} {'p50_ms':>7}  replicas: ingress {names}")
    start = time.monotonic()
    for phase, endpoint in phases:
        load.endpoint = endpoint
        load.take()
        phase_end = time.monotonic() + secs
        while time.monotonic() < phase_end:
            time.sleep(SAMPLE_S)
            got = load.take()
            p50 = f"{statistics.median(got) * 1000:7.0f}" if got else f"{'-':>7}"
            counts = " ".join(str(n) for n in replicas(store, sid))
            print(f"{time.monotonic() - start:5.0f} {phase:<10} {len(got) / SAMPLE_S:9.1f} {p50}  {counts}", flush=True)
    if load.failed:
        print(f"failed answers by status: {dict(load.failed)}")


def clean_up(server: subprocess.Popen | None, env: dict[str, str], home: Path) -> None:
    """Stop the server (its process group), the Ray cluster, and remove the scratch home."""
    if server is not None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 40.0
    home = Path(tempfile.mkdtemp(prefix="ferry-ray-scaling-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(FERRY_HOME=str(home), FERRY_HEARTBEAT_INTERVAL="1", FERRY_POLL_INTERVAL="0.2", RAY_AUTH_MODE="disabled",
               **PACE, **PUSH)  # fmt: skip
    gcs, port = free_port(), free_port()
    pace = json.dumps({k[10:].lower(): float(v) for k, v in PACE.items()})
    print(f"# {time.strftime('%F %H:%M UTC', time.gmtime())}  {os.cpu_count()} cores ({LOGICAL_CPUS} for Ray)  "
          f"{CLIENTS} clients  {secs:g} s a phase  pace {pace}")  # fmt: skip
    subprocess.run([str(BIN / "ray"), "start", "--head", "--port", str(gcs), "--num-cpus", str(LOGICAL_CPUS),
                    "--include-dashboard", "false", "--disable-usage-stats"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    server = None
    try:
        sid = setup(home, env)
        log = open(home / "serve.log", "wb")  # noqa: SIM115 - open for the server's life
        server = subprocess.Popen(
            [str(BIN / "ferry"), "--id", sid, "serve", "--ray", "--address", f"127.0.0.1:{gcs}", "--port", str(port),
             "--ingress-max-replicas", "3", "--ingress-target", "2"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        for endpoint in ENDPOINTS:
            wait_answering(url, endpoint)
        from ferry.control.store import Store
        from ferry.settings import Settings

        os.environ["FERRY_HOME"] = str(home)
        store = Store.open(Settings().store_url())
        load = Load(url)
        try:
            measure(load, store, sid, secs)
        finally:
            load.stop()
    finally:
        clean_up(server, env, home)


if __name__ == "__main__":
    main()
