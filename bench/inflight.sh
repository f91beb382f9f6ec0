#!/usr/bin/env bash
# inflight.sh [SECONDS]: the MiniLM in-process limit at the job's own concurrency. wrk keeps CONNS requests
# (default 32) in flight, so a server on C cores can run at most C batches of CONNS/C sequences at once;
# shared/peers/inproc.py's limit runs C batches of 32 (C x 32 sequences in flight). Prints the one-thread
# rate at each batch size (tokenise + ONNX Runtime, no HTTP), then C processes at batch CONNS/C against C
# processes at batch 32, ROUNDS times (default 3) in turn, with the medians and their ratio: the most any
# server can reach on the job before HTTP, JSON and the client's own CPU.
# Then plain `ferry serve` (the ferry-1worker adapter) on the job in turns with that ceiling: the share a server
# keeps (SERVE=0: the ceiling only).
#   PEERS_DIR, PEERS_HOME as elsewhere; CONNS (default 32), ROUNDS (default 3), SERVE (default 1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-3} conns=${CONNS:-32} rounds=${ROUNDS:-3}
source "$here/lib.sh"
peers_env
bash "$here/ferry/setup.sh"
peers_scripts inproc.py
cores=$(nproc)
echo "# $(date -u '+%F %H:%M UTC')  $cores cores  $(cpu)  ${secs}s a point  $conns in flight  load $(cut -d' ' -f1-3 /proc/loadavg)"
# A file, not stdin: the processes that inproc.procs spawns import their parent's main module.
cat >"$scripts/inflight.py" <<'PY'
import os
import statistics
import sys

import inproc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # inproc drops its folder; its children need it

secs, cores, conns, rounds = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if __name__ == "__main__" and rounds == 0:  # one point of the ceiling: C processes at the job's batch
    print(f"{inproc.procs(cores, max(1, conns // cores), secs):.0f}")
elif __name__ == "__main__":
    inproc.run(8, 1, 1)  # warm-up
    for batch in (1, 4, 8, 12, 16, 24, 32):
        print(f"one thread, batch {batch:<3} {inproc.run(batch, 1, secs):7.0f} seq/s", flush=True)
    own = max(1, conns // cores)
    rates = {own: [], 32: []}
    for _ in range(rounds):
        for batch in rates:
            rates[batch].append(inproc.procs(cores, batch, secs))
            print(f"{cores} processes x batch {batch:<3} {rates[batch][-1]:7.0f} seq/s", flush=True)
    at_own, at_32 = (statistics.median(rates[b]) for b in (own, 32))
    print(f"median: batch {own} (the job's {conns} in flight) {at_own:.0f} seq/s, batch 32 (inproc.py's limit) "
          f"{at_32:.0f} seq/s: the job's ceiling is {100 * at_own / at_32:.0f} % of the limit before any serving cost")
PY
cd "$scripts" && PEERS_HOME=$home "$venv/bin/python" inflight.py "$secs" "$cores" "$conns" "$rounds"

# The server against that ceiling in one run (SERVE=0 skips it): plain `ferry serve` with the job's aux config
# (the ferry-1worker adapter, one worker), wrk at CONNS connections, in turns with a ceiling point, ROUNDS times.
[[ ${SERVE:-1} == 1 ]] || exit 0
SCENARIO=minilm && ROUTE= BODY= && source "$here/ferry/scenario.sh"
side=$home/inflight && mkdir -p "$side" && ln -sfn "$home/models" "$side/models"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PEERS_HOME=$side setsid "$here/ferry-1worker/serve.sh" minilm "$port" >"$side/serve.log" 2>&1 &
server=$!
trap 'kill -TERM -- "-$server" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$scripts"' EXIT
wait_answering "http://127.0.0.1:$port$ROUTE" "$BODY" "$server" "$side/serve.log"
"$peers/load.sh" "http://127.0.0.1:$port$ROUTE" "$BODY" "$conns" 3 >/dev/null  # warm-up
ceilings=() served=()
for r in $(seq 1 "$rounds"); do
  ceilings+=("$(cd "$scripts" && PEERS_HOME=$home "$venv/bin/python" inflight.py "$secs" "$cores" "$conns" 0)")
  served+=("$("$peers/load.sh" "http://127.0.0.1:$port$ROUTE" "$BODY" "$conns" "$secs" | sed 's/^rps=\([^ ]*\).*/\1/')")
  echo "round $r: ceiling ${ceilings[-1]} seq/s, ferry serve ${served[-1]} req/s"
done
ceiling=$(printf '%s\n' "${ceilings[@]}" | median) rps=$(printf '%s\n' "${served[@]}" | median)
awk -v c="$ceiling" -v r="$rps" 'BEGIN {printf "median: ferry serve %.0f req/s = %.0f %% of the ceiling (%.0f seq/s)\n", r, 100 * r / c, c}'
