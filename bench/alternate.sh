#!/usr/bin/env bash
# alternate.sh SCENARIO SECONDS PEER_DIR PEER_DIR ...: peers (the shared/peers contract: serve.sh, scenario.sh)
# served all at once, then wrk turning from one to the next every SECONDS for ROUNDS rounds (default 8), the
# order rotated each round. Prints every round, each side's median req/s and the median of its per-round ratio
# to the first side: on a VM whose speed drifts by 20-30 % within minutes, a ratio taken within one round
# holds where figures from separate runs do not. A name resolves in bench/ first, then in the peers folder.
#   e.g. ROUNDS=10 bash bench/alternate.sh sklearn 5 triton ferry-default ferry
#   PEERS_DIR, PEERS_HOME as elsewhere; FERRY_WORKERS reaches the `ferry` adapter (default 2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
scenario=${1:?scenario: sklearn or minilm} secs=${2:?seconds per run}; shift 2
(( $# >= 2 )) || { echo "give at least two peers to compare" >&2; exit 2; }
rounds=${ROUNDS:-8}
source "$here/lib.sh"
peers_env
bash "$here/ferry/setup.sh"
[[ $scenario == minilm ]] && peers_scripts

names=() dirs=() pids=() ports=() routes=() bodies=()
stop_all() { for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap 'stop_all; rm -rf "${scripts:-}"' EXIT
for name in "$@"; do
  dir=$here/$name && [[ -x $dir/serve.sh ]] || dir=$peers/$name
  [[ -x $dir/serve.sh ]] || { echo "no peer '$name' in $here or $peers" >&2; exit 2; }
  [[ -f $dir/setup.sh && $dir == "$peers"/* ]] && bash "$dir/setup.sh" >/dev/null
  SCENARIO=$scenario && ROUTE= BODY= && source "$dir/scenario.sh"
  [[ -n $BODY ]] || { echo "$name has no $scenario scenario" >&2; exit 2; }
  side_home=$home/alternate-${#names[@]} && mkdir -p "$side_home" && ln -sfn "$home/models" "$side_home/models"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # Peers keep venvs and model repositories under PEERS_HOME; ferry adapters get a FERRY_HOME of their own.
  [[ $dir == "$peers"/* ]] && side_home=$home
  PEERS_HOME=$side_home setsid "$dir/serve.sh" "$scenario" "$port" >"$home/alternate-$name.log" 2>&1 &
  names+=("$name") pids+=($!) ports+=("$port") routes+=("$ROUTE") bodies+=("$BODY")
done
conns=16 && [[ $scenario == minilm ]] && conns=32
load() { "$peers/load.sh" "http://127.0.0.1:${ports[$1]}${routes[$1]}" "${bodies[$1]}" "$conns" "$2"; }
for i in "${!names[@]}"; do
  wait_answering "http://127.0.0.1:${ports[i]}${routes[i]}" "${bodies[i]}" "${pids[i]}" "$home/alternate-${names[i]}.log"
  load "$i" 3 >/dev/null  # warm-up
done

echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  $scenario  ${secs}s x $rounds rounds  load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s' round; for name in "${names[@]}"; do printf ' %14s' "$name"; done; echo
rates=()
n=${#names[@]}
for r in $(seq 1 "$rounds"); do
  row=()
  for k in $(seq 0 $((n - 1))); do
    i=$(( (k + r - 1) % n ))  # rotate who goes first
    row[i]=$(load "$i" "$secs" | sed 's/^rps=\([^ ]*\).*/\1/')
  done
  printf '%-5s' "$r"; for i in "${!names[@]}"; do printf ' %14s' "${row[i]}"; rates[i]="${rates[i]:-} ${row[i]}"; done; echo
done
for i in "${!names[@]}"; do
  med=$(tr ' ' '\n' <<<"${rates[i]}" | grep . | median)
  ratio=$(paste <(tr ' ' '\n' <<<"${rates[i]}" | grep .) <(tr ' ' '\n' <<<"${rates[0]}" | grep .) | awk '{print $1 / $2}' | median)
  printf 'median req/s %-14s %8.0f   per-round ratio to %s: median %.2f\n' "${names[i]}" "$med" "${names[0]}" "$ratio"
done
