#!/usr/bin/env bash
# cpu_split.sh [SCENARIO] [SECONDS]: where a plain `ferry serve` (one worker, the ferry-1worker adapter) spends its
# CPU under the job's load: each thread's share of a core (the event loop is the process's main thread; the others
# are model instances and helpers), the CPU per request, and, with py-spy in the venv, what the loop runs
# (its own frames, the top ones; uvloop and the kernel's socket work count as Runner.run).
#   SCENARIO: minilm (default, 32 connections) or sklearn (16); CONNS overrides; PYSPY=0 skips the profile.
#   PEERS_DIR, PEERS_HOME, FERRY_VENV as elsewhere.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
scenario=${1:-minilm} secs=${2:-10}
source "$here/lib.sh"
peers_env
bash "$here/ferry/setup.sh"
[[ $scenario == minilm ]] && peers_scripts
conns=${CONNS:-$([[ $scenario == minilm ]] && echo 32 || echo 16)}
SCENARIO=$scenario ROUTE= BODY= && source "$here/ferry/scenario.sh"
[[ -n $BODY ]] || { echo "no scenario '$scenario' (minilm or sklearn)" >&2; exit 2; }
echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  $(cpu)  $scenario  $conns connections  ${secs}s"
side=$home/cpu-split && mkdir -p "$side" && ln -sfn "$home/models" "$side/models"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PEERS_HOME=$side setsid "$here/ferry-1worker/serve.sh" "$scenario" "$port" >"$side/serve.log" 2>&1 &
server=$!
trap 'kill -TERM -- "-$server" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
url="http://127.0.0.1:$port$ROUTE"
wait_answering "$url" "$BODY" "$server" "$side/serve.log"
pid=$(pgrep -f -- "--port $port" | head -1)
"$peers/load.sh" "$url" "$BODY" "$conns" 3 >/dev/null  # warm-up

ticks() { for task in /proc/"$pid"/task/*; do echo "${task##*/} $(awk '{print $14 + $15}' "$task/stat")"; done | sort; }
before=$(ticks)
line=$("$peers/load.sh" "$url" "$BODY" "$conns" "$secs")
after=$(ticks)
rps=$(sed 's/^rps=\([^ ]*\).*/\1/' <<<"$line")
echo "$line"
hz=$(getconf CLK_TCK)
join <(echo "$before") <(echo "$after") | awk -v pid="$pid" -v s="$secs" -v hz="$hz" -v rps="$rps" '
  { used = ($3 - $2) / hz / s; total += used
    if (used > 0.02) printf "  thread %-8s %-12s %6.1f %% of a core\n", $1, ($1 == pid ? "event loop" : ""), 100 * used
    if ($1 == pid) loop = used }
  END { printf "server: %.1f %% of a core; the event loop %.0f us a request, the rest %.0f us a request\n",
               100 * total, 1e6 * loop / rps, 1e6 * (total - loop) / rps }'

[[ ${PYSPY:-1} == 1 && -x $venv/bin/py-spy ]] || exit 0
raw=$side/py-spy.txt
"$peers/load.sh" "$url" "$BODY" "$conns" $((secs + 4)) >/dev/null &
load=$!
sleep 1
"$venv/bin/py-spy" record -p "$pid" -d "$secs" -r 200 -f raw -o "$raw" --nonblocking >/dev/null 2>&1 || true
wait "$load" || true
python3 - "$raw" <<'PY'
import collections
import sys

own, inclusive, total = collections.Counter(), collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip().rpartition(" ")
    frames = stack.split(";")
    if not stack or frames[0].startswith("Thread._bootstrap"):  # threads other than the loop's
        continue
    total += int(count)
    names = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0] for f in frames]
    own[names[-1]] += int(count)
    for name in set(names):
        inclusive[name] += int(count)
print(f"the event loop's samples: {total}; its own time by frame:")
for name, n in own.most_common(12):
    print(f"  {100 * n / total:5.1f} %  {name}")
PY
