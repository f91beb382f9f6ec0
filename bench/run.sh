#!/usr/bin/env bash
# run.sh [SECONDS]: measure ferry next to the HTTP floor in one run_all.sh run (sklearn scenario) and
# print the table plus ferry's req/s as a percentage of the floor's.
#   PEERS_DIR (default <repo>/../shared/peers), PEERS_HOME (default /tmp/peers), FERRY_WORKERS (default 2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peers=${PEERS_DIR:-$(cd "$here/../.." && pwd)/shared/peers}
secs=${1:-15}
[[ -x $peers/run_all.sh ]] || { echo "no run_all.sh in $peers: set PEERS_DIR" >&2; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
log=${PEERS_HOME:-/tmp/peers}/logs; mkdir -p "$log"
[[ -x ${PEERS_HOME:-/tmp/peers}/venv-floor/bin/uvicorn ]] \
  || bash "$peers/floor/setup.sh" >"$log/setup-floor.log" 2>&1 || { tail -20 "$log/setup-floor.log" >&2; exit 1; }
bash "$here/ferry/setup.sh"
echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  ferry $(git -C "$here/.." rev-parse --short HEAD)$(git -C "$here/.." diff --quiet HEAD || echo '+dirty')  ${secs}s  workers=${FERRY_WORKERS:-2}  load $(cut -d' ' -f1-3 /proc/loadavg)"
table=$(SCENARIOS=sklearn "$peers/run_all.sh" "$secs" "$peers/floor" "$here/ferry")
echo "$table"
# Columns: peer scenario req/s p50 p90 p99 errors.
awk -v logdir="$log" '$2=="sklearn" {r[$1]=$3} END {
  if (r["floor"]>0 && r["ferry"]>0) printf "ferry = %.1f%% of the floor (%s vs %s req/s)\n", 100*r["ferry"]/r["floor"], r["ferry"], r["floor"]
  else { print "ferry or floor did not produce a figure (logs in " logdir ")"; exit 1 } }' <<<"$table"
