#!/usr/bin/env bash
# The main job on the embedded defaults: install ferry, train the sklearn example, register it, attach
# its preprocess code to an endpoint, serve it, and query it over HTTP.
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FERRY_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e .
export PATH="$PWD/$venv/bin:$PATH"
export FERRY_HOME=${FERRY_HOME:-$(mktemp -d /tmp/ferry-demo-XXXXXX)}
port=${FERRY_PORT:-8080}
echo "FERRY_HOME=$FERRY_HOME"

set -x
python examples/sklearn/train.py "$FERRY_HOME/sklearn-model.pkl"
sid=$(ferry create --name "serving example" | sed -n 's/.*id=//p')
mid=$(ferry --id "$sid" model upload --name "train sklearn model" --project "serving examples" \
      --framework sklearn --path "$FERRY_HOME/sklearn-model.pkl" | sed -n 's/.*Model ID=//p')
ferry --id "$sid" model add --engine sklearn --endpoint test_model_sklearn --model-id "$mid" \
      --preprocess examples/sklearn/preprocess.py
ferry --id "$sid" serve --port "$port" > "$FERRY_HOME/serve.log" 2>&1 &
set +x
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$FERRY_HOME/serve.log"; exit 1; }
  sleep 0.2
done
for body in '{"x0": 1, "x1": 2}' '{"x0": -1, "x1": -2}'; do
  echo "POST /serve/test_model_sklearn $body"
  curl -sf -X POST "http://127.0.0.1:$port/serve/test_model_sklearn" -H 'Content-Type: application/json' -d "$body"
  echo
done
ferry --id "$sid" status
ferry --id "$sid" history
