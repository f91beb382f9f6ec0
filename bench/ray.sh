#!/usr/bin/env bash
# ray.sh [SECONDS]: both jobs through `ferry serve --ray` (bench/ferry-ray: a one-node Ray cluster, 1 ingress
# replica and 1 model replica) against plain `ferry serve` (bench/ferry-default), one run_all.sh run; prints
# the raw lines and ray / plain per job.
#   PEERS_DIR (default <repo>/../shared/peers), PEERS_HOME (default /tmp/peers), FERRY_RAY_INGRESS (1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peers=${PEERS_DIR:-$(cd "$here/../.." && pwd)/shared/peers}
home=${PEERS_HOME:-/tmp/peers} secs=${1:-10}
venv=${FERRY_VENV:-$here/../.venv}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
bash "$here/ferry/setup.sh"
"$venv/bin/python" -c 'import ray.serve' 2>/dev/null || "$venv/bin/pip" install -q "ray[serve]>=2.40"
scripts=$(mktemp -d) && trap 'rm -rf "$scripts"' EXIT   # see minilm.sh: the peers' triton/ folder shadows a package
cp "$peers/models.py" "$scripts/"
[[ -f $home/models/minilm/model.onnx ]] || HF_HUB_OFFLINE=1 PEERS_HOME=$home "$venv/bin/python" "$scripts/models.py"
# A cluster per ferry-ray run, stopped after it: Serve's HTTP port is the cluster's (each run has its own), and
# a cluster that `ferry serve --ray` starts for itself leaves its actors' processes behind when the harness
# has to SIGKILL it. The run's status is its last kill's: not a failure.
on_ray() {
  local gcs
  gcs=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  RAY_AUTH_MODE=disabled "$venv/bin/ray" start --head --port "$gcs" --num-cpus "$(nproc)" --include-dashboard false \
    --disable-usage-stats >/dev/null
  SCENARIOS=$1 RAY_ADDRESS=127.0.0.1:$gcs "$peers/run_all.sh" "$secs" "$here/ferry-ray" | tail -n +2 || true
  "$venv/bin/ray" stop --force >/dev/null 2>&1
}
echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  ferry $(git -C "$here/.." rev-parse --short HEAD)  ${secs}s  ingress replicas ${FERRY_RAY_INGRESS:-1}, model replicas 1"
raw=$("$peers/run_all.sh" "$secs" "$here/ferry-default" || true; on_ray sklearn; on_ray minilm)
echo "$raw"
awk 'NR > 1 && $3 != "-" { rps[$1, $2] = $3 }
  END { split("sklearn minilm", js, " ")
        for (i = 1; i <= 2; i++) if ((("ferry-ray", js[i]) in rps) && rps["ferry-default", js[i]] > 0)
          printf "%s: ferry serve --ray / ferry serve = %.2fx\n", js[i], rps["ferry-ray", js[i]] / rps["ferry-default", js[i]] }' <<<"$raw"
