#!/usr/bin/env bash
# serve.sh minilm PORT: the MiniLM sentiment job with the tokenizer in ferry (the Hugging Face example's
# preprocess) and the model on a real tritonserver (Python backend running ONNX Runtime: the wheel's Triton
# has no ONNX backend), dynamic batching in Triton (max_batch_size 32, 2 ms). tritonserver runs in this
# process group, so run_all.sh stops it with ferry.
#   FERRY_WORKERS (default 2), FERRY_VENV, FERRY_SRC, PEERS_HOME as for ../ferry/serve.sh
set -euo pipefail
[[ $1 == minilm ]] || { echo "ferry-triton adapter: minilm only" >&2; exit 2; }
port=$2 repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${FERRY_VENV:-$repo/.venv} src=${FERRY_SRC:-$repo} home=${PEERS_HOME:-/tmp/peers}
unset FERRY_STORE FERRY_ARTIFACT_ROOT FERRY_CACHE_DIR FERRY_SERVICE
export FERRY_HOME=$home/ferry-home-triton
rm -rf "$FERRY_HOME" && mkdir -p "$FERRY_HOME/repo/minilm_1/1" "$FERRY_HOME/code"
triton=$(bash "$repo/scripts/triton_setup.sh")
ts=$(echo "$triton"/venv/lib/python3*/site-packages/pytriton/tritonserver)
models=$home/models/minilm
cp "$models/model.onnx" "$FERRY_HOME/repo/minilm_1/1/"
cat >"$FERRY_HOME/repo/minilm_1/config.pbtxt" <<'PBTXT'
name: "minilm_1"
backend: "python"
max_batch_size: 32
input [
  { name: "input_ids", data_type: TYPE_INT64, dims: [ -1 ] },
  { name: "attention_mask", data_type: TYPE_INT64, dims: [ -1 ] },
  { name: "token_type_ids", data_type: TYPE_INT64, dims: [ -1 ] }
]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 2 ] } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [ { count: 2, kind: KIND_CPU } ]
PBTXT
cat >"$FERRY_HOME/repo/minilm_1/1/model.py" <<'PY'
import os, sys
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
NAMES = ("input_ids", "attention_mask", "token_type_ids")
class TritonPythonModel:
    def initialize(self, args):
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        here = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(here, so, providers=["CPUExecutionProvider"])
    def execute(self, requests):
        out = []
        for r in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in NAMES}
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", self.session.run(["logits"], feeds)[0])]))
        return out
PY
grpc=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PYTHONPATH=$triton/pylib "$ts/bin/tritonserver" --model-repository "$FERRY_HOME/repo" --backend-directory "$ts/backends" \
  --http-address 127.0.0.1 --http-port "$http" --grpc-address 127.0.0.1 --grpc-port "$grpc" \
  --allow-metrics false --pinned-memory-pool-byte-size 0 &
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$http/v2/health/ready" >/dev/null && break; sleep 0.5; done
ferry() { "$venv/bin/ferry" "$@"; }
cp "$src/examples/huggingface/preprocess.py" "$models/tokenizer.json" "$FERRY_HOME/code/"
sid=$(ferry create --name bench | sed -n 's/.*id=//p')
ferry --id "$sid" config --triton-grpc-server "127.0.0.1:$grpc" >/dev/null
# The registry holds the model (ferry triton sync would write it into a repository for Triton's ONNX backend;
# this Triton has only the Python backend, so the repository above is written by hand).
mid=$(ferry --id "$sid" model upload --name minilm --project bench --path "$models/model.onnx" | sed -n 's/.*Model ID=//p')
ferry --id "$sid" model add --engine triton --endpoint minilm --version 1 --model-id "$mid" --preprocess "$FERRY_HOME/code" \
  --input-name input_ids attention_mask token_type_ids --input-type int64 int64 int64 \
  --input-size "[-1, -1]" "[-1, -1]" "[-1, -1]" --output-name logits --output-type float32 --output-size "[-1, 2]"
exec "$venv/bin/ferry" --id "$sid" serve --host 127.0.0.1 --port "$port" --workers "${FERRY_WORKERS:-2}"
