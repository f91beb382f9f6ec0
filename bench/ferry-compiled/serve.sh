#!/usr/bin/env bash
# ferry tuned for the sklearn job: `--workers 2` (FERRY_WORKERS) and the model compiled to ONNX at load
# (`--aux-config compile=onnx`, served by ONNX Runtime), dynamic batching as in the other adapters.
FERRY_BATCH=${FERRY_BATCH:-max_batch_size=32 compile=onnx} exec "$(dirname "$0")/../ferry/serve.sh" "$@"
