#!/usr/bin/env bash
# v2.sh [SECONDS]: the sklearn job through the Open Inference Protocol against POST /serve, one run each:
#   1. wrk (the peers' client): /serve/sklearn (adapter ferry/) and /v2/models/sklearn/infer (ferry-v2/),
#      alternating ROUNDS (default 3) times; medians and V2/serve.
#   2. one Python client (bench/v2_load.py) against one `ferry serve --grpc-port`: /serve, /v2 REST and
#      /v2 gRPC alternating; wrk cannot speak gRPC, so this is how gRPC is compared.
#   PEERS_DIR, PEERS_HOME, FERRY_WORKERS (default 2), FERRY_VENV as for compare.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peers=${PEERS_DIR:-$(cd "$here/../.." && pwd)/shared/peers}
home=${PEERS_HOME:-/tmp/peers} secs=${1:-15} rounds=${ROUNDS:-3}
venv=${FERRY_VENV:-$here/../.venv}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
bash "$here/ferry/setup.sh"
"$venv/bin/python" -c "import tritonclient.grpc" 2>/dev/null || "$venv/bin/pip" install -q -e "$here/..[triton]"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

source "$here/lib.sh"
one() { run_adapter sklearn "$here/$1"; }  # one ADAPTER: "req/s p50 p99 errors"
echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  sklearn  ${secs}s x $rounds rounds  workers=${FERRY_WORKERS:-2}  load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## wrk, 16 connections"
printf '%-5s %-8s %9s %8s %8s %6s\n' round face req/s p50_ms p99_ms errors
a=() b=()
for r in $(seq 1 "$rounds"); do
  read -r rps p50 p99 err <<<"$(one ferry)"; printf '%-5s %-8s %9s %8s %8s %6s\n' "$r" /serve "$rps" "$p50" "$p99" "$err"; a+=("$rps")
  read -r rps p50 p99 err <<<"$(one ferry-v2)"; printf '%-5s %-8s %9s %8s %8s %6s\n' "$r" /v2 "$rps" "$p50" "$p99" "$err"; b+=("$rps")
done
ma=$(printf '%s\n' "${a[@]}" | median) mb=$(printf '%s\n' "${b[@]}" | median)
awk -v a="$ma" -v b="$mb" 'BEGIN {printf "median req/s: /serve %.0f  /v2 REST %.0f  V2/serve = %.3f\n", a, b, b / a}'

echo "## one Python client, 16 in flight (bench/v2_load.py)"
port=$(free_port) grpc=$(free_port); mkdir -p "$home/logs"
PEERS_HOME=$home/v2-load FERRY_GRPC_PORT=$grpc setsid "$here/ferry/serve.sh" sklearn "$port" >"$home/logs/ferry-v2-load.log" 2>&1 &
pid=$!
trap 'kill -TERM -- -$pid 2>/dev/null; sleep 2; kill -KILL -- -$pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.5; done
"$venv/bin/python" "$here/v2_load.py" "$port" "$grpc" "$secs" "$rounds"
