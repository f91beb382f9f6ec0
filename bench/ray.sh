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
echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  ferry $(git -C "$here/.." rev-parse --short HEAD)  ${secs}s  ingress replicas ${FERRY_RAY_INGRESS:-1}, model replicas 1"
raw=$("$peers/run_all.sh" "$secs" "$here/ferry-default" "$here/ferry-ray")
echo "$raw"
awk 'NR > 1 && $3 != "-" { rps[$1, $2] = $3 }
  END { split("sklearn minilm", js, " ")
        for (i = 1; i <= 2; i++) if ((("ferry-ray", js[i]) in rps) && rps["ferry-default", js[i]] > 0)
          printf "%s: ferry serve --ray / ferry serve = %.2fx\n", js[i], rps["ferry-ray", js[i]] / rps["ferry-default", js[i]] }' <<<"$raw"
