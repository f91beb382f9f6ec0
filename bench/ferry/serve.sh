#!/usr/bin/env bash
# serve.sh SCENARIO PORT: build a fresh FERRY_HOME, train and register the example model, add its
# endpoint, then exec `ferry serve` in the foreground (run_all.sh stops it by killing the process group).
#   FERRY_WORKERS (default 2, as the floor), FERRY_VENV (default <repo>/.venv),
#   FERRY_BATCH (aux config for the endpoint; default dynamic batching: max_batch_size=32),
#   FERRY_SRC (ferry checkout whose examples/ are served; default the repo that holds this folder),
#   FERRY_ONNX (minilm: serve this .onnx file instead of the peers' fp32 model, e.g. its int8 one),
#   FERRY_METRICS=0 (serve without metrics), FERRY_CUSTOM_STATS=1 (sklearn: log x0 and x1 on every request),
#   FERRY_RAY=1 (`ferry serve --ray` on the cluster at RAY_ADDRESS, else on a local one it starts;
#   FERRY_RAY_INGRESS ingress replicas, default 1; the model's replicas from ray.* keys in FERRY_BATCH).
set -euo pipefail
scenario=$1 port=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${FERRY_VENV:-$repo/.venv} src=${FERRY_SRC:-$repo}
# A store or service from the caller's environment would leak into the run: use only our FERRY_HOME.
unset FERRY_STORE FERRY_ARTIFACT_ROOT FERRY_CACHE_DIR FERRY_SERVICE
export FERRY_HOME=${PEERS_HOME:-/tmp/peers}/ferry-home-$scenario
rm -rf "$FERRY_HOME" && mkdir -p "$FERRY_HOME"
ferry() { "$venv/bin/ferry" "$@"; }
case $scenario in
  sklearn)
    "$venv/bin/python" "$src/examples/sklearn/train.py" "$FERRY_HOME/m.pkl"
    sid=$(ferry create --name bench | sed -n 's/.*id=//p')
    mid=$(ferry --id "$sid" model upload --name logreg --project bench --path "$FERRY_HOME/m.pkl" \
          | sed -n 's/.*Model ID=//p')
    # shellcheck disable=SC2086 # FERRY_BATCH is a list of key=value words
    ferry --id "$sid" model add --engine sklearn --endpoint sklearn --model-id "$mid" \
      --preprocess "$src/examples/sklearn/preprocess.py" --aux-config ${FERRY_BATCH:-max_batch_size=32}
    # FERRY_CUSTOM_STATS=1: the example's x0 and x1 become histograms, every request sampled (bench/metrics.sh)
    if [[ ${FERRY_CUSTOM_STATS:-0} == 1 ]]; then
      ferry --id "$sid" metrics add --endpoint sklearn --log-freq 1 --variable-scalar x0=-10/10/1 x1=-10/10/1
    fi ;;
  minilm)
    # The peers' model (shared/peers/models.py builds it into $PEERS_HOME/models/minilm) and the
    # Hugging Face example's preprocess (server-side tokenizer, no padding) beside its tokenizer.json.
    models=${PEERS_HOME:-/tmp/peers}/models/minilm
    code=$FERRY_HOME/minilm-preprocess
    mkdir -p "$code" && cp "$src/examples/huggingface/preprocess.py" "$models/tokenizer.json" "$code/"
    sid=$(ferry create --name bench | sed -n 's/.*id=//p')
    mid=$(ferry --id "$sid" model upload --name minilm --project bench --path "${FERRY_ONNX:-$models/model.onnx}" \
          | sed -n 's/.*Model ID=//p')
    # shellcheck disable=SC2086
    ferry --id "$sid" model add --engine onnxruntime --endpoint minilm --model-id "$mid" --preprocess "$code" \
      --input-name input_ids attention_mask token_type_ids --input-type int64 int64 int64 \
      --input-size "[-1, -1]" "[-1, -1]" "[-1, -1]" --output-name logits --output-type float32 \
      --output-size "[-1, 2]" --aux-config ${FERRY_BATCH:-max_batch_size=32 max_queue_delay_ms=2} ;;
  *) echo "ferry adapter: no scenario '$scenario' yet" >&2; exit 2 ;;
esac
if [[ ${FERRY_RAY:-0} == 1 ]]; then
  # `ferry serve --ray` with no cluster to join starts a local one of its own, stopped with it.
  # shellcheck disable=SC2086 # RAY_ADDRESS empty: no --address
  exec "$venv/bin/ferry" --id "$sid" serve --ray ${RAY_ADDRESS:+--address "$RAY_ADDRESS"} --host 127.0.0.1 \
    --port "$port" --ingress-min-replicas "${FERRY_RAY_INGRESS:-1}" --ingress-max-replicas "${FERRY_RAY_INGRESS:-1}"
fi
exec "$venv/bin/ferry" --id "$sid" serve --host 127.0.0.1 --port "$port" --workers "${FERRY_WORKERS:-2}"
