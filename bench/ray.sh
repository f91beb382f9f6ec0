#!/usr/bin/env bash
# ray.sh [SECONDS]: both jobs through `ferry serve --ray` (bench/ferry-ray: a one-node Ray cluster, 1 ingress
# replica and 1 model replica; bench/ferry-ray-colocate: the model inside the ingress replica) against plain
# `ferry serve` (bench/ferry-default) and Ray Serve alone (the peers' rayserve/: its own app, 1 replica for
# sklearn, 2 for MiniLM), one run; prints the raw lines, ray / plain and ray / Ray Serve per job.
#   PEERS_DIR (default <repo>/../shared/peers), PEERS_HOME (default /tmp/peers), FERRY_RAY_INGRESS (1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-10}
source "$here/lib.sh"
peers_env
bash "$here/ferry/setup.sh"
"$venv/bin/python" -c 'import ray.serve' 2>/dev/null || "$venv/bin/pip" install -q "ray[serve]>=2.40"
bash "$peers/rayserve/setup.sh" >/dev/null
peers_scripts
# A cluster per ferry-ray run, stopped after it: Serve's HTTP port is the cluster's (each run has its own), and
# a cluster that `ferry serve --ray` starts for itself leaves its actors' processes behind when the harness
# has to SIGKILL it. The run's status is its last kill's: not a failure.
on_ray() {  # on_ray SCENARIO ADAPTER
  local gcs
  gcs=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  RAY_AUTH_MODE=disabled "$venv/bin/ray" start --head --port "$gcs" --num-cpus "$(nproc)" --include-dashboard false \
    --disable-usage-stats >/dev/null
  SCENARIOS=$1 RAY_ADDRESS=127.0.0.1:$gcs "$peers/run_all.sh" "$secs" "$here/$2" | tail -n +2 || true
  "$venv/bin/ray" stop --force >/dev/null 2>&1
}
echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  ferry $(git -C "$here/.." rev-parse --short HEAD)  ${secs}s  ingress replicas ${FERRY_RAY_INGRESS:-1}, model replicas 1"
# Ray 2.60's `ray start` turns token auth on and the peer's `serve run` then cannot connect: off, as for ferry-ray.
raw=$(RAY_AUTH_MODE=disabled "$peers/run_all.sh" "$secs" "$here/ferry-default" "$peers/rayserve" || true
  for job in sklearn minilm; do on_ray $job ferry-ray; on_ray $job ferry-ray-colocate; done)
echo "$raw"
awk 'NR > 1 && $3 != "-" { rps[$1, $2] = $3 }
  END { split("sklearn minilm", js, " ")
        for (i = 1; i <= 2; i++) {
          if (!(("ferry-ray", js[i]) in rps)) continue
          if (rps["ferry-default", js[i]] > 0)
            printf "%s: ferry serve --ray / ferry serve = %.2fx\n", js[i], rps["ferry-ray", js[i]] / rps["ferry-default", js[i]]
          if (rps["rayserve", js[i]] > 0)
            printf "%s: ferry serve --ray / Ray Serve alone = %.2fx, colocated / Ray Serve alone = %.2fx\n", js[i],
              rps["ferry-ray", js[i]] / rps["rayserve", js[i]], rps["ferry-ray-colocate", js[i]] / rps["rayserve", js[i]] } }' <<<"$raw"
