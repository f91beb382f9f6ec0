# Sourced by the bench scripts: the peers harness set-up (peers_env, peers_scripts) and run helpers.
# Expects $peers (the peers folder) and $secs (seconds per measured run).

# run_adapter SCENARIO DIR: one run_all.sh run of the adapter in DIR; prints "req/s p50_ms p99_ms errors".
# Environment given before the call (PEERS_HOME=... run_adapter ...) reaches the adapter.
run_adapter() {
  local line
  line=$(SCENARIOS=$1 "$peers/run_all.sh" "$secs" "$2" | awk -v s="$1" '$2==s')
  [[ $(awk '{print $3}' <<<"$line") =~ ^[0-9.]+$ ]] || { echo "$(basename "$2") ($1) failed: $line" >&2; exit 1; }
  awk '{print $3, $4, $6, $7}' <<<"$line"
}

# median: the median of the numbers on stdin, one a line.
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }

# peers_env: the paths every script that drives the peers' harness uses, and wrk. Expects $here (bench/).
#   $peers: PEERS_DIR (default <repo>/../shared/peers); $home: PEERS_HOME (/tmp/peers); $venv: FERRY_VENV (<repo>/.venv)
peers_env() {
  peers=${PEERS_DIR:-$(cd "$here/../.." && pwd)/shared/peers}
  home=${PEERS_HOME:-/tmp/peers}
  venv=${FERRY_VENV:-$here/../.venv}
  command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
}

# peers_scripts [FILE...]: $scripts, a temporary folder (removed on exit) with the peers' models.py and FILEs,
# and the MiniLM model built from it under $home once. The peers' scripts run from a copy: beside them, the
# peers' triton/ folder shadows the triton package that transformers probes for.
peers_scripts() {
  scripts=$(mktemp -d) && trap 'rm -rf "$scripts"' EXIT
  local file
  for file in models.py "$@"; do cp "$peers/$file" "$scripts/"; done
  [[ -f $home/models/minilm/model.onnx ]] || HF_HUB_OFFLINE=1 PEERS_HOME=$home "$venv/bin/python" "$scripts/models.py"
}

# wait_answering URL BODY PID LOG: until a POST of BODY to URL answers 200 (up to 2 minutes); exits with the
# LOG's name when the process PID (the server's) has ended first.
wait_answering() {
  local _
  for _ in $(seq 1 240); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -d "$2" "$1" || true) == 200 ]] && return
    kill -0 "$3" 2>/dev/null || { echo "the server did not start: $4" >&2; exit 1; }
    sleep 0.5
  done
  echo "no 200 from $1 within 2 minutes: $4" >&2; exit 1
}

# cpu: the CPU model and the flags that decide these jobs' speed (SIMD width, int8 and bf16 instructions).
cpu() {
  local flags f have=()
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  for f in avx2 avx512f avx512_vnni avx_vnni avx512_bf16 amx_int8 amx_bf16; do
    [[ $flags == *" $f "* ]] && have+=("$f")
  done
  echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) (${have[*]:-no avx2})"
}
