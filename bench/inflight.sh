#!/usr/bin/env bash
# inflight.sh [SECONDS]: the MiniLM in-process limit at the job's own concurrency. wrk keeps CONNS requests
# (default 32) in flight, so a server on C cores can run at most C batches of CONNS/C sequences at once;
# shared/peers/inproc.py's limit runs C batches of 32 (C x 32 sequences in flight). Prints the one-thread
# rate at each batch size (tokenise + ONNX Runtime, no HTTP), then C processes at batch CONNS/C against C
# processes at batch 32, ROUNDS times (default 3) in turn, with the medians and their ratio: the most any
# server can reach on the job before HTTP, JSON and the client's own CPU.
#   PEERS_DIR, PEERS_HOME as elsewhere; CONNS (default 32), ROUNDS (default 3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-3} conns=${CONNS:-32} rounds=${ROUNDS:-3}
source "$here/lib.sh"
peers_env
bash "$here/ferry/setup.sh"
peers_scripts inproc.py
cores=$(nproc)
echo "# $(date -u '+%F %H:%M UTC')  $cores cores  ${secs}s a point  $conns in flight  load $(cut -d' ' -f1-3 /proc/loadavg)"
# A file, not stdin: the processes that inproc.procs spawns import their parent's main module.
cat >"$scripts/inflight.py" <<'PY'
import os
import statistics
import sys

import inproc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # inproc drops its folder; its children need it

secs, cores, conns, rounds = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if __name__ == "__main__":
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
