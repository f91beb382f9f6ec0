#!/usr/bin/env bash
# metrics.sh [SECONDS]: what metrics cost. ferry from this work tree serves the sklearn scenario with metrics on
# and two custom variables logged on every request (ON), and with `FERRY_METRICS=0` (OFF), alternating
# ON OFF ON OFF ... (ROUNDS rounds, default 3) in one run, same adapter and load.
# Prints every run, then the median req/s of each side and the ratio ON/OFF.
#   PEERS_DIR (default <repo>/../shared/peers), PEERS_HOME (default /tmp/peers), FERRY_WORKERS (default 2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
peers=${PEERS_DIR:-$(cd "$repo/.." && pwd)/shared/peers}
secs=${1:-15} rounds=${ROUNDS:-3} home=${PEERS_HOME:-/tmp/peers}
[[ -x $peers/run_all.sh ]] || { echo "no run_all.sh in $peers: set PEERS_DIR" >&2; exit 1; }
(( rounds >= 2 )) || { echo "ROUNDS must be at least 2" >&2; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
FERRY_VENV=${FERRY_VENV:-$repo/.venv} FERRY_SRC=$repo bash "$here/ferry/setup.sh"

# one SIDE METRICS CUSTOM: one run_all.sh run of the ferry adapter; prints "req/s p50 p99 errors".
source "$here/lib.sh"
one() { PEERS_HOME=$home/metrics-$1 FERRY_METRICS=$2 FERRY_CUSTOM_STATS=$3 run_adapter sklearn "$here/ferry"; }

echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  sklearn  ${secs}s x $rounds rounds  workers=${FERRY_WORKERS:-2}  load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# ON = metrics on, x0 and x1 logged at log frequency 1   OFF = FERRY_METRICS=0   ($(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD || echo '+dirty'))"
printf '%-5s %-4s %9s %8s %8s %6s\n' round side req/s p50_ms p99_ms errors
on=() off=()
for r in $(seq 1 "$rounds"); do
  read -r rps p50 p99 err <<<"$(one on 1 1)"
  printf '%-5s %-4s %9s %8s %8s %6s\n' "$r" ON "$rps" "$p50" "$p99" "$err"; on+=("$rps")
  read -r rps p50 p99 err <<<"$(one off 0 0)"
  printf '%-5s %-4s %9s %8s %8s %6s\n' "$r" OFF "$rps" "$p50" "$p99" "$err"; off+=("$rps")
done
m_on=$(printf '%s\n' "${on[@]}" | median) m_off=$(printf '%s\n' "${off[@]}" | median)
awk -v a="$m_on" -v b="$m_off" 'BEGIN {printf "median req/s: ON %.0f  OFF %.0f  ON/OFF = %.3f\n", a, b, a / b}'
