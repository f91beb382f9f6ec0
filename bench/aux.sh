#!/usr/bin/env bash
# aux.sh SCENARIO SECONDS "AUX A" "AUX B" ...: one endpoint aux config against another on the same ferry,
# each served once (the ferry adapter, FERRY_BATCH=AUX) and all up together, then wrk turns from one to
# the next every SECONDS for ROUNDS rounds (default 8). Short alternating runs against servers that stay up
# see the same machine: on a shared VM whose speed drifts by 20-30 % within minutes, that is what lets a
# 10 % difference show. Prints every round, each side's median req/s and its ratio to the first.
#   ADAPTER (default ferry-1worker: plain `ferry serve --workers 1`, as docs/aux-config.md measured; ferry-default:
#   every default; ferry: --workers $FERRY_WORKERS), PEERS_HOME as elsewhere
#   e.g. bash bench/aux.sh minilm 4 "max_batch_size=32 max_queue_delay_ms=2 instances=2" \
#                                   "max_batch_size=32 max_queue_delay_ms=2 instances=3"
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
scenario=${1:?scenario: sklearn or minilm} secs=${2:?seconds per run}; shift 2
(( $# >= 2 )) || { echo "give at least two aux configs to compare" >&2; exit 2; }
rounds=${ROUNDS:-8} adapter=$here/${ADAPTER:-ferry-1worker}
source "$here/lib.sh"
peers_env
bash "$here/ferry/setup.sh"
[[ $scenario == minilm ]] && peers_scripts
SCENARIO=$scenario && ROUTE= BODY= && source "$here/ferry/scenario.sh"
conns=16 && [[ $scenario == minilm ]] && conns=32

auxes=("$@") pids=() ports=() rates=()
stop_all() { for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap 'stop_all; rm -rf "${scripts:-}"' EXIT
load() { "$peers/load.sh" "http://127.0.0.1:$1$ROUTE" "$BODY" "$conns" "$2"; }  # the peers' client: "rps=.. p50_ms=.."
side=0
for aux in "$@"; do  # each side its own PEERS_HOME (FERRY_HOME, logs) beside the shared models
  side_home=$home/aux-$side && mkdir -p "$side_home" && ln -sfn "$home/models" "$side_home/models"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  FERRY_BATCH=$aux PEERS_HOME=$side_home setsid "$adapter/serve.sh" "$scenario" "$port" >"$side_home/serve.log" 2>&1 &
  pids+=($!) ports+=("$port")
  wait_answering "http://127.0.0.1:$port$ROUTE" "$BODY" "${pids[-1]}" "side $side ($aux): $side_home/serve.log"
  load "$port" 3 >/dev/null  # warm-up
  side=$((side + 1))
done

echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  $(cpu)  $scenario  ${secs}s x $rounds rounds  $(basename "$adapter")  load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in "${!auxes[@]}"; do echo "# side$i: ${auxes[i]}"; done
printf '%-5s' round; for i in "${!ports[@]}"; do printf ' %9s' "side$i"; done; echo
for r in $(seq 1 "$rounds"); do
  printf '%-5s' "$r"
  for i in "${!ports[@]}"; do
    rps=$(load "${ports[$i]}" "$secs" | sed 's/^rps=\([^ ]*\).*/\1/')
    printf ' %9s' "$rps"; rates[i]="${rates[i]:-} $rps"
  done
  echo
done
first=$(tr ' ' '\n' <<<"${rates[0]}" | grep . | median)
for i in "${!ports[@]}"; do
  med=$(tr ' ' '\n' <<<"${rates[i]}" | grep . | median)
  awk -v i="$i" -v m="$med" -v f="$first" 'BEGIN {printf "median req/s side%s %8.0f  = %.3f x side0\n", i, m, m / f}'
done
