#!/usr/bin/env bash
# ragged.sh [SECONDS]: the MiniLM job under a ragged load (bench/ragged.lua: the 80 sentences of
# examples/huggingface/sentences.tsv in turn, 32 connections, wrk with 1 thread) served by plain `ferry serve`
# (bench/ferry-1worker) with length grouping off (OFF, the default) and on (ON: `group_by_length=true`),
# alternating OFF ON OFF ON ... (ROUNDS rounds, default 3) in one run. Prints every run with the share of the
# model's input that was padding (from /metrics, over the measured seconds), the medians and ON/OFF.
#   PEERS_HOME (default /tmp/peers: models/minilm from shared/peers/models.py), FERRY_VENV (default <repo>/.venv)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
secs=${1:-10} rounds=${ROUNDS:-3} home=${PEERS_HOME:-/tmp/peers}
batch="max_batch_size=32 max_queue_delay_ms=2"   # the minilm scenario's default aux config
export SENTENCES=${SENTENCES:-$repo/examples/huggingface/sentences.tsv}
[[ -f $home/models/minilm/model.onnx ]] || { echo "no $home/models/minilm/model.onnx: run shared/peers/models.py" >&2; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
source "$here/lib.sh"   # median
# Our own PEERS_HOME (its FERRY_HOME is wiped at each start), sharing the peers' models.
work=$home/ragged && mkdir -p "$work" && ln -sfn "$home/models" "$work/models"

# load SECONDS URL: wrk as shared/peers/load.sh runs it, with the ragged script; "req/s p50_ms p99_ms errors"
load() {
  local out
  out=$(wrk -t1 -c32 -d"$1s" --latency -s "$here/ragged.lua" "$2")
  awk '
    function ms(v) { if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000; if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0; return substr(v, 1, length(v) - 1) * 1000 }
    /Requests\/sec/ { rps = $2 } $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) }
    /Non-2xx/ { err += $NF } /Socket errors/ { for (i = 4; i <= NF; i += 2) { gsub(/,/, "", $i); err += $i } }
    END { printf "%s %.2f %.2f %d\n", rps, p50, p99, err }' <<<"$out"
}

# padding PORT: "padded elements" of the minilm endpoint so far
padding() {
  curl -sf "http://127.0.0.1:$1/metrics" | awk '
    /^ferry_batch_elements_total\{endpoint="minilm"/ { all = $NF } /^ferry_batch_padded_elements_total\{endpoint="minilm"/ { pad = $NF }
    END { printf "%d %d\n", pad, all }'
}

# one GROUP: serve, warm up 3 s, measure; prints "req/s p50_ms p99_ms errors waste_%"
one() {
  local port pid url line before after
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  PEERS_HOME=$work FERRY_BATCH="$batch${1:+ group_by_length=$1}" setsid "$here/ferry-1worker/serve.sh" minilm "$port" \
    >"$work/serve-$1.log" 2>&1 &
  pid=$!
  url="http://127.0.0.1:$port/serve/minilm"
  for _ in $(seq 1 240); do
    curl -sf -o /dev/null -H 'Content-Type: application/json' -d '{"text": "a fine film"}' "$url" && break
    kill -0 $pid 2>/dev/null || { echo "ferry did not start: $work/serve-$1.log" >&2; exit 1; }
    sleep 0.5
  done
  load 3 "$url" >/dev/null
  read -r before <<<"$(padding "$port")"
  line=$(load "$secs" "$url")
  after=$(padding "$port")
  kill -TERM -- -$pid 2>/dev/null; wait $pid 2>/dev/null || true
  awk -v l="$line" -v b="$before" -v a="$after" 'BEGIN { split(b, x, " "); split(a, y, " ");
    printf "%s %.1f\n", l, (y[2] > x[2]) ? 100 * (y[1] - x[1]) / (y[2] - x[2]) : -1 }'
}

echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  minilm, 80 sentences in turn, 32 connections  ${secs}s x $rounds rounds  load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# OFF = $batch (group_by_length defaults to false)   ON = the same + group_by_length=true   ($(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD || echo '+dirty'))"
printf '%-5s %-4s %9s %8s %8s %6s %9s\n' round side req/s p50_ms p99_ms errors padding%
declare -A rps waste
for r in $(seq 1 "$rounds"); do
  for side in OFF ON; do
    flag=; [[ $side == ON ]] && flag=true
    read -r q p50 p99 err pad <<<"$(one "$flag")"
    [[ $q =~ ^[0-9.]+$ ]] || { echo "the $side run failed: see $work/serve-*.log" >&2; exit 1; }
    printf '%-5s %-4s %9s %8s %8s %6s %9s\n' "$r" "$side" "$q" "$p50" "$p99" "$err" "$pad"
    rps[$side]+="$q " waste[$side]+="$pad "
  done
done
m() { tr ' ' '\n' <<<"$1" | grep . | median; }
awk -v a="$(m "${rps[ON]}")" -v b="$(m "${rps[OFF]}")" -v wa="$(m "${waste[ON]}")" -v wb="$(m "${waste[OFF]}")" \
  'BEGIN {printf "median req/s: ON %.0f  OFF %.0f  ON/OFF = %.3f   median padding: ON %.1f%%  OFF %.1f%%\n", a, b, a / b, wa, wb}'
