"""`ferry serve --ray` stops within 5 s of SIGINT or SIGTERM (tests/security/test_signals.py has the 20-run tests of
`ferry serve` and `ferry triton sync --watch`): at a random moment of its start (connecting, deploying, waiting for
the ingress), or while it serves under load, started with SIGINT ignored as a background job of a script is. Each
time its applications are deleted and no process is left.

A run on Ray costs 10-20 s (a deploy each time), so CI makes RUNS=2 (one of each kind, one of each signal);
FERRY_RAY_SIGNAL_RUNS=20 makes the issue's 20 (about 5 minutes), alternating the kinds, the signals at random."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Ferry, free_port
from tests.e2e.conftest import FAST_POLL
from tests.security.test_signals import SEED, Run, execute

ray = pytest.importorskip("ray", reason="the Ray tests need pip install 'ferry[ray]'")
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.e2e]

RUNS = int(os.environ.get("FERRY_RAY_SIGNAL_RUNS") or 2)

ECHO = """
class Preprocess:
    def process(self, data, state, collect_custom_statistics_fn=None):
        return {"echo": data}
"""


def clients(port: int, count: int = 4):
    """``count`` clients posting to /serve/echo once the server is ready, until the signal."""

    def send(run: Run, stop: threading.Event) -> None:
        def client() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                while not stop.is_set():
                    try:
                        http.post("/serve/echo", json={"x": 1})
                    except httpx.HTTPError:
                        time.sleep(0.1)  # not up yet, or going away

        threads = [threading.Thread(target=client, daemon=True) for _ in range(count)]
        for thread in threads:
            thread.start()
        stop.wait()

    return send


def test_serve_on_ray_stops_within_5_s_of_a_signal_and_deletes_its_applications(
    cluster: Cluster, ferry_sqlite: Ferry, tmp_path: Path
):
    ferry = ferry_sqlite
    sid = ferry.service()
    (tmp_path / "echo.py").write_text(ECHO)
    ferry("model", "add", "--engine", "custom", "--endpoint", "echo", "--preprocess", str(tmp_path / "echo.py"),
          "--aux-config", "ray.num_cpus=0.5")  # fmt: skip
    rng = random.Random(SEED)
    both = rng.sample((signal.SIGINT, signal.SIGTERM), 2)  # the first two runs: one of each signal, in random order
    for index in range(RUNS):
        starting = index % 2 == 0
        sig = both[index] if index < 2 else rng.choice(both)
        serve.shutdown()  # Serve's HTTP address is the cluster's: each run brings its own port
        port = free_port()
        argv = ["--id", sid, "serve", "--ray", "--address", cluster.address, "--port", str(port)]
        if starting:  # somewhere in connecting, starting Serve, deploying, waiting for the ingress to run
            run = Run("starting on Ray", argv, FAST_POLL, sig, round(rng.uniform(0, 20), 2))
        else:
            delay, ignoring = round(rng.uniform(0, 2), 2), sig == signal.SIGINT
            run = Run("serving on Ray under load", argv, FAST_POLL, sig, delay, after=" running", after_s=180,
                      ignore_sigint=ignoring, during=clients(port))  # fmt: skip
        execute(run, tmp_path, index)
        print(run.line())
        assert not run.problems, f"FERRY_SIGNALS_SEED={SEED}: {run.line()}: {'; '.join(run.problems)}\n{run.output()}"
        deadline = time.monotonic() + 60
        while any(name.startswith(f"ferry-{sid[:12]}") for name in serve.status().applications):
            assert time.monotonic() < deadline, f"applications left: {sorted(serve.status().applications)}"
            time.sleep(0.5)
