"""ray_change.py [ROUNDS]: how soon a new version answers on `ferry serve --ray`, with and without the bridge.

A one-node Ray cluster of its own (`ray start --head`, 8 logical CPUs: each version's model replica
reserves 1, and a 2-core machine would fit only the ingress and one), the sklearn example as endpoint
`sklearn` version 1, and `ferry serve --ray` for it with ferry's default settings (the store polled every
second). Each round adds two new versions one after the other with `ferry model add`: one as it comes
(the ingress answers it from its own copy while its model deployment starts: a bridge) and one with
`ray.bridge=false` (it waits for the deployment), in alternating order. A line per version: seconds
from `model add` returning to its first answer, and to every ingress replica routing it to its model
deployment (from `ferry status`).

Run with the repository's venv: `.venv/bin/python bench/ray_change.py 3`. Loopback only; it stops the
cluster and the server it started.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from ray_scaling import BIN, LOGICAL_CPUS, clean_up, ferry, free_port, wait_answering

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sklearn"
BODY = {"x0": 1, "x1": 2}


def setup(home: Path, env: dict[str, str]) -> tuple[str, str]:
    """A service with the sklearn example as sklearn/1; (its id, the model's id)."""
    model = home / "sklearn-model.pkl"
    subprocess.run([sys.executable, str(EXAMPLE / "train.py"), str(model)], env=env, check=True, capture_output=True)
    sid = ferry(env, "create", "--name", "ray change").strip().rsplit("id=", 1)[1]
    out = ferry(env, "--id", sid, "model", "upload", "--name", "logreg", "--project", "ray", "--path", str(model))
    model_id = out.rsplit("Model ID=", 1)[1].split()[0]
    add(env, sid, model_id, 1)
    return sid, model_id


def add(env: dict[str, str], sid: str, model_id: str, version: int, *aux: str) -> None:
    ferry(env, "--id", sid, "model", "add", "--engine", "sklearn", "--endpoint", "sklearn", "--version", str(version),
          "--model-id", model_id, "--preprocess", str(EXAMPLE / "preprocess.py"),
          *(["--aux-config", *aux] if aux else []))  # fmt: skip


def routed(env: dict[str, str], sid: str, version: int) -> bool:
    """Whether every ingress replica routes sklearn/``version`` to its model deployment, bridging nothing."""
    doc = json.loads(ferry(env, "--id", sid, "status", "--json"))
    ingress = [i["state"] for i in doc["instances"] if i["state"].get("role") == "ray ingress"]
    part = f"-sklearn_{version}-"
    return bool(ingress) and all(any(part in app for app in s.get("ray_apps", ())) and not s.get("bridged")
                                 for s in ingress)  # fmt: skip


def time_version(
    env: dict[str, str], url: str, sid: str, model_id: str, version: int, *aux: str
) -> tuple[float, float]:
    """(seconds to the first answer, seconds until every ingress replica routes it to its deployment)."""
    add(env, sid, model_id, version, *aux)
    added = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as http:
        while http.post(f"/serve/sklearn/{version}", json=BODY).status_code != 200:
            if time.monotonic() - added > 120:
                raise SystemExit(f"sklearn/{version} did not answer within 120 s")
            time.sleep(0.05)
    answered = time.monotonic() - added
    while not routed(env, sid, version):
        time.sleep(0.2)
    return answered, time.monotonic() - added


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    home = Path(tempfile.mkdtemp(prefix="ferry-ray-change-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(FERRY_HOME=str(home), RAY_AUTH_MODE="disabled")
    gcs, port = free_port(), free_port()
    print(
        f"# {time.strftime('%F %H:%M UTC', time.gmtime())}  {os.cpu_count()} cores  {rounds} rounds  "
        "ferry's default settings"
    )
    subprocess.run([str(BIN / "ray"), "start", "--head", "--port", str(gcs), "--num-cpus", str(LOGICAL_CPUS),
                    "--include-dashboard", "false", "--disable-usage-stats"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    server = None
    results: dict[str, list[tuple[float, float]]] = {"bridge": [], "no bridge": []}
    try:
        sid, model_id = setup(home, env)
        log = open(home / "serve.log", "wb")  # noqa: SIM115 - open for the server's life
        server = subprocess.Popen(
            [str(BIN / "ferry"), "--id", sid, "serve", "--ray", "--address", f"127.0.0.1:{gcs}", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_answering(url, "sklearn/1", body=BODY)
        time.sleep(5)  # the ingress's background imports (engines.loading.preload) done, as on a serving cluster
        print(f"{'version':>7} {'how':<10} {'answered_s':>10} {'on_deployment_s':>15}")
        version = 1
        for n in range(rounds):
            order = ["bridge", "no bridge"] if n % 2 == 0 else ["no bridge", "bridge"]
            for how in order:
                version += 1
                aux = () if how == "bridge" else ("ray.bridge=false",)
                answered, moved = time_version(env, url, sid, model_id, version, *aux)
                results[how].append((answered, moved))
                print(f"{version:>7} {how:<10} {answered:10.2f} {moved:15.2f}", flush=True)
        for how, got in results.items():
            print(f"median {how}: answered {statistics.median(a for a, _ in got):.2f} s, "
                  f"on its deployment {statistics.median(m for _, m in got):.2f} s")  # fmt: skip
    finally:
        clean_up(server, env, home)


if __name__ == "__main__":
    main()
