#!/usr/bin/env bash
# triton.sh [SECONDS]: the MiniLM sentiment job (32 connections) with the model in ferry's process (ONNX
# Runtime, ferry's dynamic batching) against the model on a real tritonserver (Python backend running ONNX
# Runtime, Triton's dynamic batching; the tokenizer stays in ferry), alternating (ROUNDS, default 3) in one
# run; prints every run, the medians and TRITON/IN-PROCESS.
#   PEERS_DIR, PEERS_HOME, FERRY_WORKERS (default 2), FERRY_VENV as for compare.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-15} rounds=${ROUNDS:-3}
source "$here/lib.sh"
peers_env
bash "$here/ferry/setup.sh"
"$venv/bin/python" -c "import onnxruntime, tokenizers, tritonclient.grpc" 2>/dev/null \
  || "$venv/bin/pip" install -q -e "$here/..[onnx,triton]" tokenizers
bash "$here/../scripts/triton_setup.sh" >/dev/null
peers_scripts
one() { run_adapter minilm "$here/$1"; }  # one ADAPTER: "req/s p50 p99 errors"
echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  minilm  ${secs}s x $rounds rounds  workers=${FERRY_WORKERS:-2}  load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-11s %9s %8s %8s %6s\n' round side req/s p50_ms p99_ms errors
a=() b=()
for r in $(seq 1 "$rounds"); do
  read -r rps p50 p99 err <<<"$(one ferry)"; printf '%-5s %-11s %9s %8s %8s %6s\n' "$r" IN-PROCESS "$rps" "$p50" "$p99" "$err"; a+=("$rps")
  read -r rps p50 p99 err <<<"$(one ferry-triton)"; printf '%-5s %-11s %9s %8s %8s %6s\n' "$r" TRITON "$rps" "$p50" "$p99" "$err"; b+=("$rps")
done
ma=$(printf '%s\n' "${a[@]}" | median) mb=$(printf '%s\n' "${b[@]}" | median)
awk -v a="$ma" -v b="$mb" 'BEGIN {printf "median req/s: IN-PROCESS %.0f  TRITON %.0f  TRITON/IN-PROCESS = %.3f\n", a, b, b / a}'
