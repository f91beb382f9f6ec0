#!/usr/bin/env bash
# compare.sh [REV] [SECONDS]: ferry from this work tree (A) against ferry at REV (B, default HEAD~1), in one
# run, alternating A B A B ... (ROUNDS rounds, default 3), same adapter, scenario and load.
#   SCENARIO: sklearn (default) or minilm (builds the peers' MiniLM model first, as minilm.sh does)
# Prints every run, then the median req/s of each side and the ratio B/A.
#   PEERS_DIR (default <repo>/../shared/peers), PEERS_HOME (default /tmp/peers), FERRY_WORKERS (default 2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
peers=${PEERS_DIR:-$(cd "$repo/.." && pwd)/shared/peers}
rev=${1:-HEAD~1} secs=${2:-15} rounds=${ROUNDS:-3} scenario=${SCENARIO:-sklearn}
home=${PEERS_HOME:-/tmp/peers}
[[ -x $peers/run_all.sh ]] || { echo "no run_all.sh in $peers: set PEERS_DIR" >&2; exit 1; }
(( rounds >= 2 )) || { echo "ROUNDS must be at least 2" >&2; exit 1; }
sha=$(git -C "$repo" rev-parse --verify --short "$rev^{commit}")   # resolved once: others may commit meanwhile
a_label="work tree ($(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD || echo '+dirty'))"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

# B: a detached worktree of REV with its own venv, removed on any exit.
tmp=$(mktemp -d /tmp/ferry-compare-XXXXXX)
cleanup() { git -C "$repo" worktree remove --force "$tmp/wt" 2>/dev/null || true; rm -rf "$tmp"; git -C "$repo" worktree prune; }
trap cleanup EXIT
git -C "$repo" worktree add -q --detach "$tmp/wt" "$sha"
venv_a=${FERRY_VENV:-$repo/.venv}
FERRY_VENV=$venv_a FERRY_SRC=$repo bash "$here/ferry/setup.sh"
FERRY_VENV=$tmp/venv FERRY_SRC=$tmp/wt bash "$here/ferry/setup.sh"
if [[ $scenario == minilm ]]; then
  "$tmp/venv/bin/pip" install -q onnxruntime tokenizers
  if [[ ! -f $home/models/minilm/model.onnx ]]; then
    scripts=$tmp/scripts && mkdir -p "$scripts" && cp "$peers/models.py" "$scripts/"  # see minilm.sh: not beside triton/
    HF_HUB_OFFLINE=1 PEERS_HOME=$home "$venv_a/bin/python" "$scripts/models.py"
  fi
  for side in A B; do mkdir -p "$home/compare-$side" && ln -sfn "$home/models" "$home/compare-$side/models"; done
fi

# one SIDE VENV SRC: one run_all.sh run of the ferry adapter; prints "req/s p50 p99 errors".
# Each side gets its own PEERS_HOME, so logs and FERRY_HOME stay apart.
source "$here/lib.sh"
one() { PEERS_HOME=$home/compare-$1 FERRY_VENV=$2 FERRY_SRC=$3 run_adapter "$scenario" "$here/ferry"; }

echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  $scenario  ${secs}s x $rounds rounds  workers=${FERRY_WORKERS:-2}  load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# A = $a_label   B = $rev ($sha)"
printf '%-5s %-4s %9s %8s %8s %6s\n' round side req/s p50_ms p99_ms errors
ra=() rb=()
for r in $(seq 1 "$rounds"); do
  out=$(one A "$venv_a" "$repo"); read -r rps p50 p99 err <<<"$out"
  printf '%-5s %-4s %9s %8s %8s %6s\n' "$r" A "$rps" "$p50" "$p99" "$err"; ra+=("$rps")
  out=$(one B "$tmp/venv" "$tmp/wt"); read -r rps p50 p99 err <<<"$out"
  printf '%-5s %-4s %9s %8s %8s %6s\n' "$r" B "$rps" "$p50" "$p99" "$err"; rb+=("$rps")
done
ma=$(printf '%s\n' "${ra[@]}" | median) mb=$(printf '%s\n' "${rb[@]}" | median)
awk -v a="$ma" -v b="$mb" 'BEGIN {printf "median req/s: A %.0f  B %.0f  B/A = %.3f\n", a, b, b / a}'
